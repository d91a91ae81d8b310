"""pytest plugin: real registry servers (distribution 2.8, `docker-registry`) on 127.0.0.1.

Loaded from tests/conftest.py with `pytest_plugins = ["tests.registries"]`.

Fixtures (each yields a `RegistryUnderTest`, see its attributes):

    plain_registry      session  HTTP, no auth
    tls_basic_registry  session  HTTPS (CA made for the session) + htpasswd alice/s3cret-pa55
    token_registry      session  HTTPS + Bearer tokens from an e2e.services.token_server.TokenServer
                                 (HTTPS too) that accepts alice/s3cret-pa55
    fresh_registry      function factory: fresh_registry(tls=..., auth=None|"basic"|"token")
                                 starts a new, private registry, for tests that stop,
                                 kill or restart it; all stopped at the test's teardown
    unique_repo         function a repository name no other test uses, e.g.
                                 "t/test-push-works-3f9a1c"
    registry_pki        session  the PKI: .ca, .server, .token_signer, .ca_cert, .cert_dir

Session registries are shared: use `unique_repo` (or `make_repo_name`) for a fresh
repository, never stop them, and take deltas of `token_requests` rather than
absolute values.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import urllib3

from e2e.cluster import nodehost
from e2e.services.pki import CertPair, issue, make_ca, write_private
from e2e.services.registry import LOOPBACK, Registry, TokenAuth
from e2e.services.token_server import TokenServer

__all__ = [
    "PASSWORD",
    "USERNAME",
    "RegistryPKI",
    "RegistryUnderTest",
    "make_repo_name",
]

USERNAME = "alice"
PASSWORD = "s3cret-pa55"
TOKEN_SERVICE = "migrate-test-registry"
TOKEN_ISSUER = "migrate-test-token-issuer"

Auth = Literal["basic", "token"] | None


@dataclass(frozen=True)
class RegistryPKI:
    """A CA and the certificates the registries and token servers use.

    ca: the CA (cert + key), to issue more certificates with e2e.services.pki.issue.
    server: server certificate for 127.0.0.1 and localhost.
    token_signer: the certificate/key token JWTs are signed with (no EKU).
    cert_dir: a containers-style certificate directory holding `ca.crt`
        (buildah/skopeo `--cert-dir`, or /etc/containers/certs.d/HOST:PORT).
    """

    ca: CertPair
    server: CertPair
    token_signer: CertPair
    cert_dir: Path

    @property
    def ca_cert(self) -> Path:
        """PEM file of the CA certificate (trust anchor for every server here)."""
        return self.ca.cert


@dataclass
class RegistryUnderTest:
    """A running registry plus what a client needs to talk to it.

    registry: the e2e.services.registry.Registry (stop/kill/restart it only if it came
        from `fresh_registry`).
    ca_cert: CA PEM file to verify the registry's (and token server's)
        certificate, None for plain HTTP.
    cert_dir: directory with `ca.crt` for buildah/skopeo `--cert-dir`, None for HTTP.
    username, password: credentials the registry (or its token server) accepts,
        None without auth.
    token_server: the Bearer token server, None unless token auth.
    auth: "basic", "token" or None.
    """

    registry: Registry
    ca_cert: Path | None = None
    cert_dir: Path | None = None
    username: str | None = None
    password: str | None = None
    token_server: TokenServer | None = None
    auth: Auth = None

    @property
    def url(self) -> str:
        """e.g. `https://127.0.0.1:40123`."""
        return self.registry.url

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`, the registry part of image references."""
        return self.registry.host

    @property
    def scheme(self) -> str:
        return self.registry.scheme

    @property
    def tls(self) -> bool:
        return self.registry.tls is not None

    @property
    def creds(self) -> str | None:
        """`user:password` (buildah/skopeo `--creds`), None without auth."""
        if self.username is None or self.password is None:
            return None
        return f"{self.username}:{self.password}"

    @property
    def token_requests(self) -> int:
        """Requests the token server has answered so far (0 without one)."""
        return self.token_server.request_count if self.token_server is not None else 0

    def http(self, **kw: Any) -> urllib3.PoolManager:
        """A urllib3 pool that verifies TLS against `ca_cert`; no retries, 10 s timeouts."""
        kw.setdefault("retries", False)
        kw.setdefault("timeout", urllib3.Timeout(total=10))
        if self.ca_cert is not None:
            kw.setdefault("cert_reqs", "CERT_REQUIRED")
            kw.setdefault("ca_certs", str(self.ca_cert))
        return urllib3.PoolManager(**kw)

    def basic_auth_header(self) -> dict[str, str]:
        """`{"Authorization": "Basic ..."}` for the configured credentials."""
        assert self.creds is not None, "this registry has no credentials"
        return {"Authorization": "Basic " + base64.b64encode(self.creds.encode()).decode()}

    def bearer_token(self, scope: str) -> str:
        """Fetch a token for `scope` (e.g. `repository:NAME:pull,push`) over HTTP.

        Counts as a token server request.
        """
        assert self.token_server is not None, "not a token-auth registry"
        response = self.http().request(
            "GET",
            self.token_server.realm,
            fields={"service": self.token_server.service, "scope": scope},
            headers=self.basic_auth_header(),
        )
        assert response.status == 200, (response.status, response.data)
        return str(response.json()["token"])

    def auth_headers(self, scope: str) -> dict[str, str]:
        """Authorization header for `scope`, whatever the auth kind ({} without auth)."""
        if self.auth == "basic":
            return self.basic_auth_header()
        if self.auth == "token":
            return {"Authorization": f"Bearer {self.bearer_token(scope)}"}
        return {}


def make_repo_name(hint: str = "repo") -> str:
    """A valid, unique repository name: `t/<sanitised hint>-<6 hex>`."""
    slug = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")[:40].strip("-") or "repo"
    return f"t/{slug}-{secrets.token_hex(3)}"


# -- PKI ---------------------------------------------------------------------------------


def _build_pki(directory: Path) -> RegistryPKI:
    ca = make_ca(directory, "migrate-test-ca")
    server = issue(ca, directory, "registry", dns=["localhost"], ips=["127.0.0.1"])
    signer = issue(ca, directory, "token-signer", cn="migrate-test-token-signer")
    cert_dir = directory / "certs.d"
    cert_dir.mkdir(mode=0o700, exist_ok=True)
    write_private(cert_dir / "ca.crt", ca.cert.read_bytes())
    return RegistryPKI(ca=ca, server=server, token_signer=signer, cert_dir=cert_dir)


@pytest.fixture(scope="session")
def registry_pki(tmp_path_factory: pytest.TempPathFactory) -> RegistryPKI:
    """The session's CA, registry server certificate and token signing certificate."""
    return _build_pki(tmp_path_factory.mktemp("registry-pki"))


# -- starting registries -----------------------------------------------------------------


def _require_binary() -> None:
    if shutil.which("docker-registry") is None:
        pytest.skip("docker-registry (Debian package docker-registry) is not installed")


class _Stack:
    """Registries and token servers started for one fixture, stopped in reverse order."""

    def __init__(self) -> None:
        self._closers: list[Callable[[], None]] = []

    def start(
        self, state_dir: Path, pki: RegistryPKI | None, *, tls: bool, auth: Auth,
        address: str = LOOPBACK,
    ) -> RegistryUnderTest:
        _require_binary()
        if pki is None and (tls or auth == "token"):
            raise ValueError("TLS and token auth need a PKI")
        server_cert = pki.server if pki is not None and tls else None
        if pki is not None and tls and address != LOOPBACK:
            server_cert = issue(pki.ca, state_dir, "registry", ips=[address])
        token_server: TokenServer | None = None
        token: TokenAuth | None = None
        if auth == "token":
            assert pki is not None
            token_server = TokenServer(
                pki.token_signer,
                {USERNAME: PASSWORD},
                service=TOKEN_SERVICE,
                issuer=TOKEN_ISSUER,
                tls=server_cert,
            )
            token_server.start()
            self._closers.append(token_server.stop)
            token = TokenAuth(
                realm=token_server.realm,
                service=TOKEN_SERVICE,
                issuer=TOKEN_ISSUER,
                rootcertbundle=pki.ca_cert,
            )
        registry = Registry(
            state_dir,
            tls=server_cert,
            htpasswd={USERNAME: PASSWORD} if auth == "basic" else None,
            token=token,
            address=address,
        )
        self._closers.append(registry.close)
        registry.start()
        return RegistryUnderTest(
            registry=registry,
            ca_cert=pki.ca_cert if pki is not None and tls else None,
            cert_dir=pki.cert_dir if pki is not None and tls else None,
            username=USERNAME if auth else None,
            password=PASSWORD if auth else None,
            token_server=token_server,
            auth=auth,
        )

    def close(self) -> None:
        errors: list[BaseException] = []
        while self._closers:
            try:
                self._closers.pop()()
            except Exception as e:  # keep stopping the rest
                errors.append(e)
        if errors:
            raise errors[0]


@contextlib.contextmanager
def _one(state_dir: Path, pki: RegistryPKI | None, *, tls: bool, auth: Auth,
         address: str = LOOPBACK) -> Iterator[RegistryUnderTest]:
    """One registry (and its token server) for a fixture's lifetime."""
    stack = _Stack()
    try:
        yield stack.start(state_dir, pki, tls=tls, auth=auth, address=address)
    finally:
        stack.close()


@pytest.fixture(scope="session")
def plain_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryUnderTest]:
    """A shared HTTP registry without auth (`buildah push --tls-verify=false`)."""
    with _one(tmp_path_factory.mktemp("registry-plain"), None, tls=False, auth=None) as registry:
        yield registry


@pytest.fixture(scope="session")
def plain_basic_registry(tmp_path_factory: pytest.TempPathFactory
                         ) -> Iterator[RegistryUnderTest]:
    """A shared HTTP registry with Basic auth (alice / s3cret-pa55): a private registry a
    runtime lists as insecure."""
    with _one(tmp_path_factory.mktemp("registry-plain-basic"),
              None, tls=False, auth="basic") as registry:
        yield registry


@pytest.fixture(scope="session")
def tls_basic_registry(
    tmp_path_factory: pytest.TempPathFactory, registry_pki: RegistryPKI
) -> Iterator[RegistryUnderTest]:
    """A shared HTTPS registry with Basic auth: alice / s3cret-pa55."""
    with _one(tmp_path_factory.mktemp("registry-basic"),
              registry_pki, tls=True, auth="basic") as registry:
        yield registry


@pytest.fixture(scope="session")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory, registry_pki: RegistryPKI
) -> Iterator[RegistryUnderTest]:
    """A shared HTTPS registry with Bearer token auth (token server: alice / s3cret-pa55)."""
    with _one(tmp_path_factory.mktemp("registry-token"),
              registry_pki, tls=True, auth="token") as registry:
        yield registry


class FreshRegistry:
    """Factory behind the `fresh_registry` fixture: `fresh_registry(tls=True, auth="basic")`."""

    def __init__(self, tmp_path: Path, pki: Callable[[], RegistryPKI]) -> None:
        self._tmp = tmp_path
        self._pki = pki
        self._stack = _Stack()
        self._count = 0

    def __call__(self, *, tls: bool = False, auth: Auth = None) -> RegistryUnderTest:
        self._count += 1
        state_dir = self._tmp / f"registry-{self._count}"
        pki = self._pki() if tls or auth == "token" else None
        return self._stack.start(state_dir, pki, tls=tls, auth=auth)

    def close(self) -> None:
        self._stack.close()


@pytest.fixture
def fresh_registry(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[FreshRegistry]:
    """Start private registries (stopped at teardown), e.g. for kill/restart tests."""

    def pki() -> RegistryPKI:
        # Only TLS/token registries need the session PKI: resolve it lazily.
        value = request.getfixturevalue("registry_pki")
        assert isinstance(value, RegistryPKI)
        return value

    factory = FreshRegistry(tmp_path, pki)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def unique_repo(request: pytest.FixtureRequest) -> str:
    """A repository name unique to this test (and this run), e.g. `t/test-push-1a2b3c`."""
    return make_repo_name(request.node.name)



def push_app_image(reg: RegistryUnderTest, repo: str, tag: str = "v1") -> str:
    """An ordinary OCI image (one layer holding bin/app, Cmd /bin/app) pushed to ``reg``
    with the registry API, as a workload's image; its manifest digest."""
    import hashlib
    import io
    import json
    import tarfile

    def digest(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("bin/app")
        info.size, info.mode = 4, 0o755
        tf.addfile(info, io.BytesIO(b"\x7fELF"))
    layer = buf.getvalue()
    # The repository in a label: each repository's image has an ID of its own (the
    # config's digest, which CRI-O finds a restore's image by), as separate builds do.
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": ["/bin/app"], "Labels": {"repository": repo}},
                         "rootfs": {"type": "layers", "diff_ids": [digest(layer)]}}).encode()
    http = reg.http()
    for blob in (layer, config):
        location = http.request("POST", f"{reg.url}/v2/{repo}/blobs/uploads/").headers["Location"]
        url = location if location.startswith("http") else reg.url + location
        sep = "&" if "?" in url else "?"
        done = http.request("PUT", f"{url}{sep}digest={digest(blob)}", body=blob,
                            headers={"Content-Type": "application/octet-stream"})
        assert done.status == 201, done.data
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest(layer), "size": len(layer)}]}).encode()
    put = http.request("PUT", f"{reg.url}/v2/{repo}/manifests/{tag}", body=manifest,
                       headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert put.status == 201, put.data
    return digest(manifest)


# -- registries that pods reach ----------------------------------------------------------


@pytest.fixture(scope="session")
def pods_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[nodehost.NodeHost]:
    """A 198.18 address this host holds (the host end of a node host of its own), where
    servers that pods must reach listen: a pod's 127.0.0.1 is its own. A pod on a real
    node routes there through its bridge; node agents' Jobs run on this host. Needs root."""
    if (reason := nodehost.missing()) is not None:
        # As tests.cluster.require_cluster (not imported: this plugin loads first).
        if os.environ.get("MIGRATE_REQUIRE_CLUSTER") == "1":
            pytest.fail(f"{reason} (MIGRATE_REQUIRE_CLUSTER=1: nothing may be skipped)")
        pytest.skip(reason)
    with nodehost.node_host("for-pods", tmp_path_factory.mktemp("for-pods")) as host:
        yield host


@pytest.fixture(scope="session")
def pod_plain_registry(pods_host: nodehost.NodeHost, tmp_path_factory: pytest.TempPathFactory
                       ) -> Iterator[RegistryUnderTest]:
    """`plain_registry`, on `pods_host`: for builds in Jobs and drains in pods."""
    with _one(tmp_path_factory.mktemp("registry-pods-plain"),
              None, tls=False, auth=None, address=pods_host.host_address) as registry:
        yield registry


@pytest.fixture(scope="session")
def pod_plain_basic_registry(pods_host: nodehost.NodeHost,
                             tmp_path_factory: pytest.TempPathFactory
                             ) -> Iterator[RegistryUnderTest]:
    """`plain_basic_registry`, on `pods_host`."""
    with _one(tmp_path_factory.mktemp("registry-pods-plain-basic"),
              None, tls=False, auth="basic", address=pods_host.host_address) as registry:
        yield registry


@pytest.fixture(scope="session")
def pod_tls_basic_registry(pods_host: nodehost.NodeHost, registry_pki: RegistryPKI,
                           tmp_path_factory: pytest.TempPathFactory
                           ) -> Iterator[RegistryUnderTest]:
    """`tls_basic_registry`, on `pods_host` (its certificate names that address)."""
    with _one(tmp_path_factory.mktemp("registry-pods-basic"),
              registry_pki, tls=True, auth="basic", address=pods_host.host_address) as registry:
        yield registry
