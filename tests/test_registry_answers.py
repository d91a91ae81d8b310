"""Registry answers of the wrong shape, and local files ssl cannot use, met through the CLI
and RegistryClient against the scripted fake registry (tests/fake_registry.py).

Each is the registry's (or the user's) fault, not a bug and not a passing failure: it is
refused at once with a RegistryError (exit 7) and a hint, never retried, and no
credential (a password, a token, a signed upload URL) reaches the output.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from migrate.adapters.registry.client import RegistryClient
from migrate.adapters.registry.reference import parse_reference
from migrate.errors import ExitCode, RegistryError
from migrate.settings import RegistrySettings
from tests.conftest import Result
from tests.fake_registry import FakeRegistry, Reply

Cli = Callable[..., Result]
TLS_HINT = "give the registry's CA with --cert-dir DIR (DIR/*.crt), or --no-tls-verify"
AUTH_HINT = "the registry's auth configuration is broken"
NOT_OCI_HINT = "is this an OCI distribution registry?"
CERTS_HINT = ("a certificate directory holds CAs as *.crt (PEM) and a client pair as "
              "NAME.cert + NAME.key (containers-certs.d(5))")


def build(cli: Cli, archive: Path, fake: FakeRegistry, *extra: str) -> Result:
    return cli("build", archive, "--image", f"{fake.host}/ckpt/app:v1", *extra)


def bearer(fake: FakeRegistry, realm: str) -> None:
    """/v2/ asks for a Bearer token from ``realm``, then lets the client in."""
    fake.script("GET", "/v2/", Reply(401, {"WWW-Authenticate": f'Bearer realm="{realm}"'}),
                Reply(200))


# -- the token service's answer --------------------------------------------------------------


@pytest.mark.parametrize("answer, fault", [
    (b'{"token": "SECRET-TOKEN\\nX-Injected: y"}', "with a token that is not a string of "
                                                  "visible ASCII"),
    (b'{"access_token": "SECRET-TOKEN\\r\\n"}', "with a token that is not a string of "
                                              "visible ASCII"),
    (b'{"token": "SECRET TOKEN"}', "with a token that is not a string of visible ASCII"),
    (b'{"token": 12345}', "with a token that is not a string of visible ASCII"),
    (b'{"token": ["SECRET-TOKEN"]}', "with a token that is not a string of visible ASCII"),
    (b"[]", "without a token"),
    (b'"SECRET-TOKEN"', "without a token"),
])
def test_a_token_answer_of_the_wrong_shape_is_refused_unquoted(
        cli: Cli, counters_archive: Path, fake: FakeRegistry, answer: bytes,
        fault: str) -> None:
    bearer(fake, f"http://{fake.host}/token")
    fake.script("GET", "/token", Reply(200, body=answer))
    r = build(cli, counters_archive, fake, "--no-tls-verify")
    assert r.code == ExitCode.REGISTRY
    assert r.err == (f"error: {fake.host}: the token service answered {fault}\n"
                     f"hint: {AUTH_HINT}\n")
    assert "SECRET" not in r.out + r.err
    assert fake.count("GET", "/token") == 1  # not retried
    assert fake.count("GET", "/v2/") == 1  # nor sent to the registry


# -- the registry's other answers ------------------------------------------------------------


@pytest.mark.parametrize("body", [b'{"errors": 5}', b'{"errors": "broken"}',
                                  b'{"errors": true}', b"[1, 2]", b"null"])
def test_an_error_body_of_another_shape_gives_the_status_alone(
        cli: Cli, counters_archive: Path, fake: FakeRegistry, body: bytes) -> None:
    fake.script("GET", "/v2/", Reply(400, body=body))
    r = build(cli, counters_archive, fake, "--no-tls-verify")
    assert r.code == ExitCode.REGISTRY
    assert r.err == (f"error: {fake.host}: login failed: HTTP 400 (Bad Request)\n"
                     "hint: the registry refused the request\n")


def test_a_forbidden_with_an_error_body_of_another_shape_is_an_auth_error(
        cli: Cli, counters_archive: Path, fake: FakeRegistry) -> None:
    fake.script("GET", "/v2/", Reply(403, body=b'{"errors": 5}'))
    r = build(cli, counters_archive, fake, "--no-tls-verify")
    assert r.code == ExitCode.AUTH
    assert r.err == (f"error: {fake.host}: login failed: HTTP 403 (Forbidden) without "
                     "credentials\n"
                     "hint: the account may not push to ckpt/app\n")


@pytest.mark.parametrize("key, list_of, body", [
    ("tags", "list_tags", b'{"tags": 5}'),
    ("tags", "list_tags", b'{"tags": {"v1": 1}}'),
    ("tags", "list_tags", b'{"tags": ["v1", 2]}'),
    ("tags", "list_tags", b'{"tags": "v1"}'),
    ("repositories", "catalog", b'{"repositories": [null]}'),
])
def test_a_list_of_another_shape_is_refused(fake: FakeRegistry, key: str, list_of: str,
                                            body: bytes) -> None:
    client = RegistryClient(parse_reference(f"{fake.host}/ckpt/app:v1"),
                            RegistrySettings(tls_verify=False))
    client.login()
    path = "/v2/_catalog" if list_of == "catalog" else "/v2/ckpt/app/tags/list"
    fake.script("GET", path, Reply(200, body=body))
    with pytest.raises(RegistryError) as e:
        getattr(client, list_of)()
    what = "catalog" if list_of == "catalog" else "tag list"
    assert type(e.value) is RegistryError  # not transient
    assert e.value.message == f"{fake.host}: {what}: '{key}' is not a list of names"
    assert e.value.hint == NOT_OCI_HINT
    # null is an empty list (distribution says so for a repository without tags).
    fake.script("GET", path, Reply(200, body=json.dumps({key: None}).encode()))
    assert getattr(client, list_of)() == []


def test_an_upload_start_without_a_location_is_refused(
        cli: Cli, counters_archive: Path, fake: FakeRegistry) -> None:
    fake.script("POST", "/v2/ckpt/app/blobs/uploads/", Reply(202))
    r = build(cli, counters_archive, fake, "--no-tls-verify")
    assert r.code == ExitCode.REGISTRY
    assert r.err == (f"error: {fake.host}: upload start answered 202 without a Location\n"
                     f"hint: {NOT_OCI_HINT}\n")
    assert fake.count("POST") == 1


def test_a_layer_upload_without_a_location_is_refused(
        cli: Cli, counters_archive: Path, fake: FakeRegistry) -> None:
    fake.script("POST", "/v2/ckpt/app/blobs/uploads/",
                Reply(202, {"Location": "/v2/ckpt/app/blobs/uploads/u1"}))
    fake.script("PATCH", "/v2/ckpt/app/blobs/uploads/u1", Reply(202))
    r = build(cli, counters_archive, fake, "--no-tls-verify")
    assert r.code == ExitCode.REGISTRY
    assert r.err == (f"error: {fake.host}: layer upload answered 202 without a Location\n"
                     f"hint: {NOT_OCI_HINT}\n")
    assert fake.count("PATCH") == 1


@pytest.mark.parametrize("location, shown", [
    ("http://127.0.0.1:99999/upload?_state=SECRET-STATE", "http://127.0.0.1:99999/upload"),
    ("ftp://127.0.0.1/upload", "ftp://127.0.0.1/upload"),
    ("http://[::1/upload?_state=SECRET-STATE", "http://[::1/upload"),
    ("http:///upload", "http:///upload"),
])
def test_an_unusable_location_is_refused_at_once(
        cli: Cli, counters_archive: Path, fake: FakeRegistry, recwarn: pytest.WarningsRecorder,
        location: str, shown: str) -> None:
    """The registry's mistake: the same on every try, so not retried; its query (a signed
    upload state) is left out of the message."""
    fake.script("POST", "/v2/ckpt/app/blobs/uploads/", Reply(202, {"Location": location}))
    r = build(cli, counters_archive, fake, "--no-tls-verify")
    assert r.code == ExitCode.REGISTRY
    assert r.err == (f"error: {fake.host}: upload start: the Location {shown!r} is not a "
                     "usable http(s) URL\n"
                     f"hint: {NOT_OCI_HINT}\n")
    assert "SECRET" not in r.err
    assert fake.count("POST") == 1
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]


# -- the token service itself ----------------------------------------------------------------


def test_tls_failing_at_the_token_service_is_not_retried(
        cli: Cli, counters_archive: Path, fake: FakeRegistry) -> None:
    """The fake refuses every TLS handshake: a token service that does not speak TLS (or
    whose CA is not given) fails the same way on every try."""
    bearer(fake, f"https://{fake.host}/token")
    r = build(cli, counters_archive, fake, "--no-tls-verify")
    assert r.code == ExitCode.REGISTRY
    assert r.err == (f"error: TLS with the token service of {fake.host} failed: SSLError\n"
                     f"hint: {TLS_HINT}\n")
    assert fake.count("GET", "/v2/") == 1
    assert fake.tls_attempts == 2  # the registry's first try, then the token service's


@pytest.mark.parametrize("realm", ["/token", "token", "ftp://{host}/token",
                                   "http://127.0.0.1:99999/token", "http:///token"])
def test_an_unusable_realm_is_refused_at_once(
        cli: Cli, counters_archive: Path, fake: FakeRegistry, recwarn: pytest.WarningsRecorder,
        realm: str) -> None:
    """The token auth spec makes the realm the token service's URL, which docker and
    containers/image use as it is: a relative one is not resolved against the registry."""
    realm = realm.format(host=fake.host)
    bearer(fake, realm)
    r = build(cli, counters_archive, fake, "--no-tls-verify")
    assert r.code == ExitCode.REGISTRY
    assert r.err == (f"error: {fake.host}: the Bearer challenge's realm {realm!r} is not a "
                     "usable absolute http(s) URL\n"
                     f"hint: {AUTH_HINT}\n")
    assert fake.count("GET", "/v2/") == 1
    assert fake.count("GET", "/token") == 0
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]


# -- the user's certificate directory --------------------------------------------------------


def test_a_ca_that_is_not_a_certificate_is_named(
        cli: Cli, counters_archive: Path, fake: FakeRegistry, tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("garbage\n")
    r = build(cli, counters_archive, fake, "--cert-dir", tmp_path)
    assert r.code == ExitCode.REGISTRY
    assert r.err == (f"error: {tmp_path}/ca.crt: cannot load a CA certificate "
                     "(NO_CERTIFICATE_OR_CRL_FOUND)\n"
                     f"hint: {CERTS_HINT}\n")
    assert fake.seen == []


def test_a_client_certificate_without_its_key_is_named(
        cli: Cli, counters_archive: Path, fake: FakeRegistry, tmp_path: Path) -> None:
    (tmp_path / "client.cert").write_text("-----BEGIN CERTIFICATE-----\n")
    r = build(cli, counters_archive, fake, "--cert-dir", tmp_path)
    assert r.code == ExitCode.REGISTRY
    assert r.err == (f"error: {tmp_path}/client.cert: a client certificate without its key "
                     f"{tmp_path}/client.key\n"
                     f"hint: {CERTS_HINT}\n")
    assert fake.seen == []


def test_a_client_pair_that_is_not_pem_is_named(
        cli: Cli, counters_archive: Path, fake: FakeRegistry, tmp_path: Path) -> None:
    (tmp_path / "client.cert").write_text("garbage\n")
    (tmp_path / "client.key").write_text("SECRET-KEY\n")
    r = build(cli, counters_archive, fake, "--cert-dir", tmp_path)
    assert r.code == ExitCode.REGISTRY
    assert r.err == (f"error: {tmp_path}/client.cert: cannot load a client certificate and "
                     "key (not PEM)\n"
                     f"hint: {CERTS_HINT}\n")
    assert "SECRET" not in r.err


def test_a_dangling_link_in_the_certificate_directory_is_named(
        cli: Cli, counters_archive: Path, fake: FakeRegistry, tmp_path: Path) -> None:
    (tmp_path / "ca.crt").symlink_to(tmp_path / "gone.pem")
    r = build(cli, counters_archive, fake, "--cert-dir", tmp_path)
    assert r.code == ExitCode.REGISTRY
    assert r.err == (f"error: {tmp_path}/ca.crt: cannot load a certificate file (No such file "
                     "or directory)\n"
                     f"hint: {CERTS_HINT}\n")


# -- the user's credentials file -------------------------------------------------------------


@pytest.mark.parametrize("value", ["pässwörd-SECRET", "\u00e9\u00e9\u00e9\u00e9"])
def test_a_non_ascii_auth_value_is_a_malformed_entry(
        cli: Cli, counters_archive: Path, fake: FakeRegistry, tmp_path: Path,
        value: str) -> None:
    """base64 cannot hold it: b64decode raises a plain ValueError, not binascii.Error."""
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps({"auths": {fake.host: {"auth": value}}}))
    r = build(cli, counters_archive, fake, "--no-tls-verify", "--authfile", authfile)
    assert r.code == ExitCode.INVALID_INPUT
    assert r.err == (f"error: {authfile}: the entry for {fake.host} has an invalid 'auth' "
                     "value\n"
                     "hint: it must be base64 of USER:PASSWORD\n")
    assert value not in r.err
    assert fake.seen == []
