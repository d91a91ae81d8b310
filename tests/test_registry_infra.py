"""The registry test infrastructure itself: PKI, docker-registry wrapper, token server.

These run the real registry (distribution 2.8, Debian's docker-registry) on
127.0.0.1 and talk to it with urllib3 and with buildah, so later tests can rely
on the fixtures in tests/registries.py behaving like a real deployment.
"""

from __future__ import annotations

import gc
import hashlib
import ipaddress
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import e2e.services.registry
from e2e.services.pki import issue, make_ca, write_private
from e2e.services.registry import Registry, RegistryError
from e2e.services.token_server import decode_jwt
from tests.registries import (
    PASSWORD,
    USERNAME,
    FreshRegistry,
    RegistryPKI,
    RegistryUnderTest,
)

# -- helpers ---------------------------------------------------------------------------


def challenge(response: urllib3.BaseHTTPResponse) -> tuple[str, dict[str, str]]:
    """Parse `WWW-Authenticate: Scheme k="v",k2="v2"` into (scheme, params)."""
    header = response.headers.get("WWW-Authenticate", "")
    scheme, _, rest = header.partition(" ")
    return scheme, dict(re.findall(r'(\w+)="([^"]*)"', rest))


def upload_blob(
    reg: RegistryUnderTest, repo: str, data: bytes, headers: dict[str, str] | None = None
) -> str:
    """Upload `data` as a blob (POST + PUT, the OCI distribution monolithic flow); its digest."""
    http = reg.http()
    if headers is None:
        headers = reg.auth_headers(f"repository:{repo}:pull,push")
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = http.request("POST", f"{reg.url}/v2/{repo}/blobs/uploads/", headers=headers)
    assert r.status == 202, (r.status, r.data)
    location = urllib.parse.urljoin(reg.url, r.headers["Location"])
    sep = "&" if "?" in location else "?"
    r = http.request(
        "PUT",
        f"{location}{sep}digest={digest}",
        body=data,
        headers={**headers, "Content-Type": "application/octet-stream"},
    )
    assert r.status == 201, (r.status, r.data)
    return digest


def blob_status(reg: RegistryUnderTest, repo: str, digest: str) -> int:
    headers = reg.auth_headers(f"repository:{repo}:pull")
    return reg.http().request("HEAD", f"{reg.url}/v2/{repo}/blobs/{digest}", headers=headers).status


def tags(reg: RegistryUnderTest, repo: str) -> list[str]:
    headers = reg.auth_headers(f"repository:{repo}:pull")
    r = reg.http().request("GET", f"{reg.url}/v2/{repo}/tags/list", headers=headers)
    assert r.status == 200, (r.status, r.data)
    return list(r.json()["tags"] or [])


# -- PKI -------------------------------------------------------------------------------


def test_pki_writes_private_files_with_proper_usages(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "pki")
    server = issue(ca, tmp_path / "pki", "srv", dns=["localhost"], ips=["127.0.0.1"])
    client = issue(ca, tmp_path / "pki", "node", client=True, cn="system:node:a", org="nodes")

    for pair in (ca, server, client):
        for path in (pair.cert, pair.key):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path

    ca_cert = ca.load_cert()
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    srv = server.load_cert()
    srv.verify_directly_issued_by(ca_cert)
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    eku = srv.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]

    cli = client.load_cert()
    cli.verify_directly_issued_by(ca_cert)
    eku = cli.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cli.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:a"
    assert cli.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "nodes"


def test_pki_rewrites_existing_file_as_0600(tmp_path: Path) -> None:
    (tmp_path / "ca.key").write_bytes(b"old")
    (tmp_path / "ca.key").chmod(0o644)
    ca = make_ca(tmp_path, "ca")
    assert stat.S_IMODE(ca.key.stat().st_mode) == 0o600
    assert ca.load_key() is not None


# -- plain registry ----------------------------------------------------------------------


def test_plain_registry_answers_v2(plain_registry: RegistryUnderTest) -> None:
    assert plain_registry.host.startswith("127.0.0.1:")
    assert plain_registry.url == f"http://{plain_registry.host}"
    r = plain_registry.http().request("GET", f"{plain_registry.url}/v2/")
    assert r.status == 200
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_plain_registry_stores_blobs(plain_registry: RegistryUnderTest, unique_repo: str) -> None:
    digest = upload_blob(plain_registry, unique_repo, b"hello blob")
    assert blob_status(plain_registry, unique_repo, digest) == 200
    r = plain_registry.http().request(
        "GET", f"{plain_registry.url}/v2/{unique_repo}/blobs/{digest}"
    )
    assert r.data == b"hello blob"


# -- TLS + Basic --------------------------------------------------------------------------


def test_tls_registry_certificate_needs_the_test_ca(tls_basic_registry: RegistryUnderTest) -> None:
    assert tls_basic_registry.url.startswith("https://127.0.0.1:")
    untrusting = urllib3.PoolManager(retries=False, timeout=10, cert_reqs="CERT_REQUIRED")
    with pytest.raises(urllib3.exceptions.SSLError):
        untrusting.request("GET", f"{tls_basic_registry.url}/v2/")
    # ... and verifies (hostname 127.0.0.1 included) with it.
    r = tls_basic_registry.http().request("GET", f"{tls_basic_registry.url}/v2/")
    assert r.status == 401


def test_tls_registry_basic_auth(tls_basic_registry: RegistryUnderTest) -> None:
    reg = tls_basic_registry
    assert (reg.username, reg.password, reg.creds) == (USERNAME, PASSWORD, "alice:s3cret-pa55")
    http = reg.http()

    anonymous = http.request("GET", f"{reg.url}/v2/")
    assert anonymous.status == 401
    scheme, params = challenge(anonymous)
    assert scheme == "Basic"
    assert "realm" in params

    wrong = urllib3.util.make_headers(basic_auth=f"{USERNAME}:wrong")
    assert http.request("GET", f"{reg.url}/v2/", headers=wrong).status == 401

    ok = http.request("GET", f"{reg.url}/v2/", headers=reg.basic_auth_header())
    assert ok.status == 200


def test_tls_registry_stores_blobs_with_basic_auth(
    tls_basic_registry: RegistryUnderTest, unique_repo: str
) -> None:
    digest = upload_blob(tls_basic_registry, unique_repo, b"over tls")
    assert blob_status(tls_basic_registry, unique_repo, digest) == 200


# -- token auth -------------------------------------------------------------------------


def test_token_registry_bearer_flow(token_registry: RegistryUnderTest, unique_repo: str) -> None:
    reg = token_registry
    server = reg.token_server
    assert server is not None
    http = reg.http()

    # 1. Anonymous: 401 with a Bearer challenge naming the realm, service and scope.
    r = http.request("GET", f"{reg.url}/v2/{unique_repo}/tags/list")
    assert r.status == 401
    scheme, params = challenge(r)
    assert scheme == "Bearer"
    assert params["realm"] == server.realm
    assert params["realm"].startswith("https://127.0.0.1:")
    assert params["service"] == server.service
    assert params["scope"] == f"repository:{unique_repo}:pull"

    # 2. The token server issues a token for that challenge.
    before = server.request_count
    r = http.request(
        "GET",
        params["realm"],
        fields={"service": params["service"], "scope": f"repository:{unique_repo}:pull,push"},
        headers=reg.basic_auth_header(),
    )
    assert r.status == 200, r.data
    body = r.json()
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 300
    assert server.request_count == before + 1
    header, claims = decode_jwt(body["token"])
    assert header["alg"] == "ES256"
    assert len(header["x5c"]) == 1
    assert claims["aud"] == server.service
    assert claims["iss"] == server.issuer
    assert claims["sub"] == USERNAME
    assert claims["access"] == [
        {"type": "repository", "name": unique_repo, "actions": ["pull", "push"]}
    ]
    assert {"exp", "nbf", "iat", "jti"} <= claims.keys()

    # 3. The registry accepts it: the repository is unknown (404), not unauthorized.
    bearer = {"Authorization": f"Bearer {body['token']}"}
    r = http.request("GET", f"{reg.url}/v2/{unique_repo}/tags/list", headers=bearer)
    assert r.status == 404, (r.status, r.data)
    assert r.json()["errors"][0]["code"] == "NAME_UNKNOWN"
    assert http.request("GET", f"{reg.url}/v2/", headers=bearer).status == 200

    # 4. ... and it grants push.
    digest = upload_blob(reg, unique_repo, b"token pushed", headers=bearer)
    assert http.request(
        "HEAD", f"{reg.url}/v2/{unique_repo}/blobs/{digest}", headers=bearer
    ).status == 200


def test_token_is_scoped_to_its_repository(
    token_registry: RegistryUnderTest, unique_repo: str
) -> None:
    reg = token_registry
    token = reg.bearer_token(f"repository:{unique_repo}-other:pull")
    r = reg.http().request(
        "GET",
        f"{reg.url}/v2/{unique_repo}/tags/list",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status == 401
    scheme, params = challenge(r)
    assert scheme == "Bearer"
    assert params["error"] == "insufficient_scope"


def test_token_server_rejects_bad_credentials(token_registry: RegistryUnderTest) -> None:
    server = token_registry.token_server
    assert server is not None
    http = token_registry.http()
    fields = {"service": server.service, "scope": "repository:x/y:pull"}
    before_tokens = server.token_count
    wrong = urllib3.util.make_headers(basic_auth=f"{USERNAME}:nope")
    assert http.request("GET", server.realm, fields=fields, headers=wrong).status == 401
    unknown = urllib3.util.make_headers(basic_auth=f"mallory:{PASSWORD}")
    assert http.request("GET", server.realm, fields=fields, headers=unknown).status == 401
    anonymous = http.request("GET", server.realm, fields=fields)
    assert anonymous.status == 401
    assert challenge(anonymous)[0] == "Basic"
    assert server.token_count == before_tokens
    assert [r.status for r in server.requests[-3:]] == [401, 401, 401]


def test_token_auth_over_plain_http(fresh_registry: FreshRegistry, unique_repo: str) -> None:
    reg = fresh_registry(auth="token")
    assert reg.token_server is not None
    assert reg.url.startswith("http://") and reg.token_server.realm.startswith("http://127.0.0.1:")
    r = reg.http().request("GET", f"{reg.url}/v2/")
    assert r.status == 401 and challenge(r)[1]["realm"] == reg.token_server.realm
    digest = upload_blob(reg, unique_repo, b"plain token")
    assert blob_status(reg, unique_repo, digest) == 200
    assert reg.token_server.token_count >= 2


def test_token_server_survives_a_plain_http_client(token_registry: RegistryUnderTest) -> None:
    server = token_registry.token_server
    assert server is not None
    plain = urllib3.PoolManager(retries=False, timeout=5)
    with pytest.raises(urllib3.exceptions.HTTPError):
        plain.request("GET", server.realm.replace("https://", "http://"))
    token_registry.bearer_token("repository:x/y:pull")  # still serving


def test_token_server_oauth2_password_grant(token_registry: RegistryUnderTest) -> None:
    server = token_registry.token_server
    assert server is not None
    r = token_registry.http().request_encode_body(
        "POST",
        server.realm,
        fields={
            "grant_type": "password",
            "username": USERNAME,
            "password": PASSWORD,
            "service": server.service,
            "scope": "repository:x/y:pull",
            "client_id": "migrate-tests",
        },
        encode_multipart=False,
    )
    assert r.status == 200, r.data
    _, claims = decode_jwt(r.json()["access_token"])
    assert claims["access"] == [{"type": "repository", "name": "x/y", "actions": ["pull"]}]


# -- lifecycle: restart, kill, failures, garbage collection --------------------------------


def test_restart_keeps_blobs_and_port(fresh_registry: FreshRegistry, unique_repo: str) -> None:
    reg = fresh_registry(tls=True, auth="basic")
    digest = upload_blob(reg, unique_repo, b"survives a restart")
    host, pid = reg.host, reg.registry.pid
    reg.registry.restart()
    assert reg.host == host
    assert reg.registry.pid != pid
    assert blob_status(reg, unique_repo, digest) == 200


def test_upload_survives_kill_and_restart(fresh_registry: FreshRegistry, unique_repo: str) -> None:
    """An upload session started before a SIGKILL can be finished after a restart."""
    reg = fresh_registry()
    http = reg.http()
    data = secrets.token_bytes(4096)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = http.request("POST", f"{reg.url}/v2/{unique_repo}/blobs/uploads/")
    assert r.status == 202
    location = urllib.parse.urljoin(reg.url, r.headers["Location"])
    octets = {"Content-Type": "application/octet-stream"}
    r = http.request("PATCH", location, body=data[:1000], headers=octets)
    assert r.status == 202, r.data
    location = urllib.parse.urljoin(reg.url, r.headers["Location"])

    reg.registry.kill()
    assert not reg.registry.running
    with pytest.raises(urllib3.exceptions.NewConnectionError):
        http.request("GET", f"{reg.url}/v2/")

    reg.registry.restart()
    r = http.request("PATCH", location, body=data[1000:], headers=octets)
    assert r.status == 202, r.data
    location = urllib.parse.urljoin(reg.url, r.headers["Location"])
    r = http.request("PUT", f"{location}&digest={digest}")
    assert r.status == 201, r.data
    assert http.request("GET", f"{reg.url}/v2/{unique_repo}/blobs/{digest}").data == data


def test_start_failure_reports_the_log(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    reg = Registry(tmp_path / "reg", tls=(missing / "c.crt", missing / "c.key"), ready_timeout=5)
    with pytest.raises(RegistryError) as excinfo:
        reg.start()
    message = str(excinfo.value)
    assert "exited" in message
    assert "c.crt" in message  # from the registry's own log
    assert not reg.running


def test_fixed_port_in_use_is_reported(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        reg = Registry(tmp_path / "reg", port=port)
        with pytest.raises(RegistryError, match="address already in use"):
            reg.start()
        assert not reg.running


def test_free_port_race_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process takes the probed port before the registry binds it: pick another."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real_free_port = e2e.services.registry.free_port
        monkeypatch.setattr(e2e.services.registry, "free_port",
                            lambda address: next(ports, None) or real_free_port(address))
        with Registry(tmp_path / "reg") as reg:
            assert reg.port != taken
            assert urllib3.request("GET", f"{reg.url}/v2/", retries=False).status == 200
        assert "address already in use" in (tmp_path / "reg" / "registry.log").read_text()


def test_extra_config_cannot_leave_loopback(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg", port=5000, extra_config={"http": {"addr": ":5000"}})
    assert reg.config()["http"]["addr"] == "127.0.0.1:5000"
    with pytest.raises(ValueError, match="debug"):
        Registry(tmp_path / "r", port=1, extra_config={"http": {"debug": {"addr": ":5001"}}}).config()
    with pytest.raises(ValueError, match="notifications"):
        Registry(tmp_path / "r", port=1, extra_config={"notifications": {}}).config()
    # Another listen address only among the test world's own.
    on_test_host = Registry(tmp_path / "t", port=5000, address="198.18.7.1",
                            extra_config={"http": {"addr": "0.0.0.0:5000"}})
    assert (on_test_host.host, on_test_host.config()["http"]["addr"]) == \
        ("198.18.7.1:5000", "198.18.7.1:5000")
    for elsewhere in ("0.0.0.0", "10.0.0.1", "198.20.0.1"):
        with pytest.raises(ValueError, match=r"loopback or 198\.18/16"):
            Registry(tmp_path / "x", address=elsewhere)


def test_unreferenced_registry_is_reaped(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg").start()
    pid = reg.pid
    assert pid is not None
    os.kill(pid, 0)
    del reg
    gc.collect()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_stop_is_idempotent_and_reaps(tmp_path: Path) -> None:
    with Registry(tmp_path / "reg") as reg:
        pid = reg.pid
        assert pid is not None
    assert not reg.running
    reg.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# -- buildah, a real client --------------------------------------------------------------


@pytest.fixture
def buildah_env(tmp_path: Path) -> dict[str, str]:
    """Environment for buildah with an empty, private auth file."""
    if shutil.which("buildah") is None:
        pytest.skip("buildah is not installed")
    auth = write_private(tmp_path / "auth.json", b'{"auths": {}}\n')  # buildah wants it to exist
    return {**os.environ, "REGISTRY_AUTH_FILE": str(auth)}


@pytest.fixture
def scratch_image(buildah_env: dict[str, str]) -> Iterator[str]:
    """A tiny local image (buildah commit of `scratch`), removed at teardown."""
    name = f"localhost/migrate-infra-{secrets.token_hex(4)}"
    ctr = f"{name.rsplit('/', 1)[1]}-ctr"

    def buildah(*args: str) -> None:
        done = subprocess.run(
            ["buildah", *args], capture_output=True, text=True, env=buildah_env, timeout=120
        )
        assert done.returncode == 0, f"buildah {' '.join(args)}: {done.stderr}"

    buildah("from", "--name", ctr, "scratch")
    try:
        buildah("commit", "--quiet", ctr, name)
    finally:
        buildah("rm", ctr)
    try:
        yield name
    finally:
        buildah("rmi", "--force", name)


def buildah_push(
    env: dict[str, str], reg: RegistryUnderTest, image: str, dest: str
) -> subprocess.CompletedProcess[str]:
    args = ["buildah", "push"]
    if reg.cert_dir is not None:
        args += ["--cert-dir", str(reg.cert_dir)]
    else:
        args += ["--tls-verify=false"]
    if reg.creds is not None:
        args += ["--creds", reg.creds]
    args += [image, f"docker://{reg.host}/{dest}"]
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("kind", ["plain", "tls_basic", "token"])
def test_buildah_pushes(
    kind: str,
    request: pytest.FixtureRequest,
    scratch_image: str,
    buildah_env: dict[str, str],
    unique_repo: str,
    registry_pki: RegistryPKI,
) -> None:
    reg: RegistryUnderTest = request.getfixturevalue(f"{kind}_registry")
    if reg.cert_dir is not None:
        assert (reg.cert_dir / "ca.crt").read_bytes() == registry_pki.ca_cert.read_bytes()
    before = reg.token_requests
    done = buildah_push(buildah_env, reg, scratch_image, f"{unique_repo}:v1")
    assert done.returncode == 0, done.stderr
    assert tags(reg, unique_repo) == ["v1"]
    if kind == "token":
        server = reg.token_server
        assert server is not None
        assert reg.token_requests > before
        pushed = [
            s
            for r in server.requests[before:]
            if r.status == 200 and r.account == USERNAME
            for s in r.scopes
            if s.name == unique_repo and "push" in s.actions
        ]
        assert pushed, server.requests[before:]


def test_buildah_without_credentials_is_refused(
    tls_basic_registry: RegistryUnderTest,
    scratch_image: str,
    buildah_env: dict[str, str],
    unique_repo: str,
) -> None:
    reg = RegistryUnderTest(
        registry=tls_basic_registry.registry, cert_dir=tls_basic_registry.cert_dir
    )
    done = buildah_push(buildah_env, reg, scratch_image, f"{unique_repo}:v1")
    assert done.returncode != 0
    assert "unauthorized" in done.stderr.lower() or "authentication" in done.stderr.lower()
