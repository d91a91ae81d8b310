"""The registry retry policy, alone and driven through RegistryClient against a fake registry.

Waits are recorded instead of slept by replacing the policy's ``sleep``
(``tenacity.Retrying.sleep``), so backoff and Retry-After are checked exactly
and the suite stays fast.
"""

from __future__ import annotations

import base64
import socket
from collections.abc import Callable

import pytest

from migrate.adapters.registry.client import RegistryClient
from migrate.adapters.registry.reference import parse_reference
from migrate.errors import (
    AuthError,
    ClusterError,
    ExitCode,
    InputError,
    RegistryError,
    TransientClusterError,
    TransientRegistryError,
)
from migrate.retry import registry_policy
from migrate.settings import RegistrySettings, RetrySettings, Secret
from tests.fake_registry import FakeRegistry, Reply, error_json

FAST = RetrySettings(attempts=5, initial_wait=0, max_wait=0)
DIGEST = "sha256:" + "ab" * 32


class Flaky:
    """Raises the given errors in turn, then returns "ok"; counts its calls."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def transient(n: int, retry_after: float | None = None) -> list[Exception]:
    return [TransientRegistryError(f"failure {i + 1}", retry_after=retry_after)
            for i in range(n)]


def recording_policy(settings: RetrySettings) -> tuple[object, list[float]]:
    policy = registry_policy(settings)
    waits: list[float] = []
    policy.sleep = waits.append  # type: ignore[method-assign]
    return policy, waits


# -- counting attempts ----------------------------------------------------------------


@pytest.mark.parametrize("failures", [0, 1, 2, 4])
def test_transient_failures_are_retried_until_success(failures: int) -> None:
    fn = Flaky(*transient(failures))
    assert registry_policy(FAST)(fn) == "ok"
    assert fn.calls == failures + 1


@pytest.mark.parametrize("failures", [1, 3])
def test_transient_failures_retried_in_attempt_loop(failures: int) -> None:
    fn = Flaky(*transient(failures))
    result = None
    for attempt in registry_policy(FAST):
        with attempt:
            result = fn()
    assert result == "ok"
    assert fn.calls == failures + 1


@pytest.mark.parametrize("error", [
    RegistryError("HTTP 404 (MANIFEST_UNKNOWN)"),
    AuthError("HTTP 401 without credentials"),
    InputError("bad file"),
    ValueError("a bug"),
], ids=lambda e: type(e).__name__)
def test_other_errors_are_not_retried(error: Exception) -> None:
    fn = Flaky(error, *transient(3))
    with pytest.raises(type(error)) as e:
        registry_policy(FAST)(fn)
    assert e.value is error
    assert fn.calls == 1


def test_non_transient_after_transient_stops_at_once() -> None:
    final = AuthError("HTTP 403")
    fn = Flaky(*transient(2), final, *transient(2))
    with pytest.raises(AuthError) as e:
        registry_policy(FAST)(fn)
    assert e.value is final
    assert fn.calls == 3


@pytest.mark.parametrize("attempts", [1, 2, 5])
def test_stops_after_attempts_and_reraises_the_last_error(attempts: int) -> None:
    errors = transient(attempts + 3)
    fn = Flaky(*errors)
    with pytest.raises(TransientRegistryError) as e:
        registry_policy(RetrySettings(attempts=attempts, initial_wait=0, max_wait=0))(fn)
    assert fn.calls == attempts
    assert e.value is errors[attempts - 1]  # the error itself (reraise), not a RetryError


def test_stops_after_attempts_in_attempt_loop() -> None:
    errors = transient(10)
    fn = Flaky(*errors)
    with pytest.raises(TransientRegistryError) as e:
        for attempt in registry_policy(RetrySettings(attempts=3, initial_wait=0, max_wait=0)):
            with attempt:
                fn()
    assert fn.calls == 3
    assert e.value is errors[2]


def test_attempts_exactly_enough_succeeds() -> None:
    fn = Flaky(*transient(4))
    assert registry_policy(RetrySettings(attempts=5, initial_wait=0, max_wait=0))(fn) == "ok"
    assert fn.calls == 5


def test_a_policy_can_be_reused() -> None:
    # RegistryClient keeps one policy for all its requests: the count restarts each time.
    policy = registry_policy(RetrySettings(attempts=3, initial_wait=0, max_wait=0))
    for _ in range(3):
        fn = Flaky(*transient(2))
        for attempt in policy:
            with attempt:
                fn()
        assert fn.calls == 3


# -- waits -----------------------------------------------------------------------------------


def test_exponential_backoff_without_retry_after() -> None:
    policy, waits = recording_policy(RetrySettings(attempts=5, initial_wait=0.5, max_wait=100))
    fn = Flaky(*transient(4))
    assert policy(fn) == "ok"  # type: ignore[operator]
    assert waits == [0.5, 1.0, 2.0, 4.0]


def test_backoff_is_capped_at_max_wait() -> None:
    policy, waits = recording_policy(RetrySettings(attempts=6, initial_wait=1, max_wait=3))
    fn = Flaky(*transient(6))
    with pytest.raises(TransientRegistryError):
        policy(fn)  # type: ignore[operator]
    assert waits == [1, 2, 3, 3, 3]  # no wait after the last attempt
    assert fn.calls == 6


def test_retry_after_wins_over_backoff() -> None:
    policy, waits = recording_policy(RetrySettings(attempts=5, initial_wait=1, max_wait=60))
    fn = Flaky(TransientRegistryError("429", retry_after=7),
               TransientRegistryError("503"),
               TransientRegistryError("503", retry_after=0),
               TransientRegistryError("503", retry_after=0.25))
    assert policy(fn) == "ok"  # type: ignore[operator]
    # Retry-After 7 (not 1), backoff for the 2nd attempt (2), then 0 and 0.25 (not 4 and 8).
    assert waits == [7, 2, 0, 0.25]


def test_retry_after_is_capped_at_max_wait() -> None:
    policy, waits = recording_policy(RetrySettings(attempts=3, initial_wait=1, max_wait=5))
    fn = Flaky(*transient(2, retry_after=3600))
    assert policy(fn) == "ok"  # type: ignore[operator]
    assert waits == [5, 5]


def test_no_wait_when_not_retried() -> None:
    policy, waits = recording_policy(RetrySettings(attempts=5, initial_wait=1, max_wait=5))
    with pytest.raises(RegistryError):
        policy(Flaky(RegistryError("404")))  # type: ignore[operator]
    assert waits == []


def test_zero_waits_really_do_not_sleep() -> None:
    policy, waits = recording_policy(FAST)
    assert policy(Flaky(*transient(4, retry_after=30))) == "ok"  # type: ignore[operator]
    assert waits == [0, 0, 0, 0]


def client_for(host: str, retry: RetrySettings = FAST, **kw: object) -> RegistryClient:
    settings = RegistrySettings(tls_verify=False, retry=retry, timeout=10, **kw)  # type: ignore[arg-type]
    return RegistryClient(parse_reference(f"{host}/repo:tag"), settings)


def logged_in(fake: FakeRegistry, retry: RetrySettings = FAST, **kw: object) -> RegistryClient:
    """A client past login(), with the fake's request log emptied."""
    client = client_for(fake.host, retry, **kw)
    client.login()
    # one refused TLS try, then plain HTTP (--no-tls-verify allows it)
    assert (fake.tls_attempts, fake.count("GET", "/v2/"), client.requests) == (1, 1, 2)
    fake.reset()
    client.requests = 0
    return client


def with_policy(client: RegistryClient, call: Callable[[], object]) -> object:
    result = None
    for attempt in client.policy:
        with attempt:
            result = call()
    return result


BLOB = f"/v2/repo/blobs/{DIGEST}"
MANIFEST = "/v2/repo/manifests/tag"
UNAVAILABLE = Reply(503, {"Retry-After": "0"}, error_json("UNAVAILABLE", "try later"))


# -- retried over HTTP ---------------------------------------------------------------------------------


def test_head_503_twice_then_200(fake: FakeRegistry) -> None:
    fake.script("HEAD", BLOB, UNAVAILABLE, UNAVAILABLE, Reply(200))
    client = logged_in(fake)
    assert with_policy(client, lambda: client.has_blob(DIGEST)) is True
    assert fake.count("HEAD", BLOB) == 3
    assert len(fake.seen) == 3
    assert client.requests == 3


def test_head_404_means_absent_and_is_not_retried(fake: FakeRegistry) -> None:
    fake.script("HEAD", BLOB, Reply(404))
    client = logged_in(fake)
    assert with_policy(client, lambda: client.has_blob(DIGEST)) is False
    assert fake.count("HEAD", BLOB) == 1
    assert client.requests == 1


def test_get_manifest_retried_on_429_and_5xx(fake: FakeRegistry) -> None:
    fake.script("GET", MANIFEST, Reply(429, {"Retry-After": "0"}), Reply(500), Reply(502),
                Reply(200, body=b'{"schemaVersion": 2}'))
    client = logged_in(fake)
    data = with_policy(client, lambda: client.get_manifest("tag", "application/json"))
    assert data == b'{"schemaVersion": 2}'
    assert fake.count("GET", MANIFEST) == 4
    assert client.requests == 4


def test_put_manifest_replays_the_body(fake: FakeRegistry) -> None:
    body = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}'
    fake.script("PUT", MANIFEST, UNAVAILABLE, UNAVAILABLE,
                Reply(201, {"Docker-Content-Digest": DIGEST}))
    client = logged_in(fake)
    got = with_policy(client, lambda: client.put_manifest(
        "tag", body, "application/vnd.oci.image.manifest.v1+json"))
    assert got == DIGEST
    puts = [s for s in fake.seen if s.method == "PUT"]
    assert len(puts) == 3
    assert all(p.body == body for p in puts)
    assert all(p.headers["Content-Type"] == "application/vnd.oci.image.manifest.v1+json"
               for p in puts)
    assert client.requests == 3


def test_gives_up_after_attempts_with_the_registry_error(fake: FakeRegistry) -> None:
    fake.script("HEAD", BLOB, UNAVAILABLE)  # for ever
    client = logged_in(fake, RetrySettings(attempts=3, initial_wait=0, max_wait=0))
    with pytest.raises(TransientRegistryError) as e:
        with_policy(client, lambda: client.has_blob(DIGEST))
    assert "HTTP 503" in str(e.value)
    assert e.value.retry_after == 0
    assert e.value.exit_code == ExitCode.REGISTRY
    assert fake.count("HEAD", BLOB) == 3
    assert client.requests == 3


def test_retry_after_header_sets_the_wait(fake: FakeRegistry) -> None:
    fake.script("GET", MANIFEST, Reply(503, {"Retry-After": "7"}), Reply(429, {"Retry-After": "2"}),
                Reply(503), Reply(200, body=b"{}"))
    client = logged_in(fake, RetrySettings(attempts=5, initial_wait=0.5, max_wait=30))
    waits: list[float] = []
    client.policy.sleep = waits.append  # type: ignore[method-assign]
    assert with_policy(client, lambda: client.get_manifest("tag", "application/json")) == b"{}"
    assert waits == [7, 2, 2]  # Retry-After, Retry-After, then backoff 0.5 * 2**2
    assert fake.count("GET", MANIFEST) == 4


def test_retry_after_header_is_capped(fake: FakeRegistry) -> None:
    fake.script("HEAD", BLOB, Reply(503, {"Retry-After": "3600"}), Reply(200))
    client = logged_in(fake, RetrySettings(attempts=5, initial_wait=0.5, max_wait=4))
    waits: list[float] = []
    client.policy.sleep = waits.append  # type: ignore[method-assign]
    assert with_policy(client, lambda: client.has_blob(DIGEST)) is True
    assert waits == [4]


# -- not retried over HTTP ---------------------------------------------------------------------------


def test_404_manifest_carries_the_registry_message(fake: FakeRegistry) -> None:
    fake.script("GET", MANIFEST, Reply(404, body=error_json("MANIFEST_UNKNOWN", "manifest unknown")),
                Reply(200, body=b"{}"))
    client = logged_in(fake)
    with pytest.raises(RegistryError) as e:
        with_policy(client, lambda: client.get_manifest("tag", "application/json"))
    err = e.value
    assert not isinstance(err, TransientRegistryError)
    assert "MANIFEST_UNKNOWN: manifest unknown" in str(err)
    assert "HTTP 404" in str(err)
    assert fake.host in str(err)
    assert err.exit_code == ExitCode.REGISTRY
    assert fake.count("GET", MANIFEST) == 1
    assert client.requests == 1


def test_401_basic_without_credentials_at_login(fake: FakeRegistry) -> None:
    fake.script("GET", "/v2/", Reply(401, {"WWW-Authenticate": 'Basic realm="x"'},
                                     error_json("UNAUTHORIZED", "authentication required")))
    client = client_for(fake.host)
    with pytest.raises(AuthError) as e:
        client.login()
    err = e.value
    assert "HTTP 401" in str(err)
    assert "without credentials" in str(err)
    assert err.hint is not None and "--creds" in err.hint and "--authfile" in err.hint
    assert err.exit_code == ExitCode.AUTH
    assert fake.count("GET", "/v2/") == 1
    assert "Authorization" not in fake.seen[0].headers


def test_401_on_a_request_is_not_retried(fake: FakeRegistry) -> None:
    fake.script("HEAD", BLOB, Reply(401, {"WWW-Authenticate": 'Basic realm="x"'}))
    client = logged_in(fake)
    with pytest.raises(AuthError) as e:
        with_policy(client, lambda: client.has_blob(DIGEST))
    assert "without credentials" in str(e.value)
    assert e.value.hint is not None and "--creds" in e.value.hint
    assert fake.count("HEAD", BLOB) == 1
    assert client.requests == 1


def test_401_with_wrong_credentials_names_the_user_not_the_password(
        fake: FakeRegistry) -> None:
    password = "wr0ng-PASSWORD-value"
    fake.script("GET", "/v2/", Reply(401, {"WWW-Authenticate": 'Basic realm="x"'}))
    client = client_for(fake.host, creds=("alice", Secret(password)))
    with pytest.raises(AuthError) as e:
        client.login()
    err = e.value
    assert "'alice'" in str(err)
    assert password not in str(err) and password not in (err.hint or "")
    # It answered the challenge once with Basic alice:password, then gave up.
    gets = [s for s in fake.seen if s.path == "/v2/"]
    assert len(gets) == 2
    assert "Authorization" not in gets[0].headers
    expected = "Basic " + base64.b64encode(f"alice:{password}".encode()).decode()
    assert gets[1].headers["Authorization"] == expected


def test_401_mid_session_answers_the_challenge_and_replays_the_body(fake: FakeRegistry) -> None:
    # The registry let us in anonymously, then asks for credentials on the PUT.
    fake.script("PUT", MANIFEST, Reply(401, {"WWW-Authenticate": 'Basic realm="x"'}),
                Reply(201, {"Docker-Content-Digest": DIGEST}))
    client = logged_in(fake, creds=("alice", Secret("pw")))
    body = b'{"schemaVersion": 2}'
    assert with_policy(client, lambda: client.put_manifest("tag", body, "application/json")) == DIGEST
    puts = [s for s in fake.seen if s.method == "PUT"]
    assert [p.body for p in puts] == [body, body]
    assert "Authorization" not in puts[0].headers
    assert puts[1].headers["Authorization"] == "Basic " + base64.b64encode(b"alice:pw").decode()
    assert client.requests == 2


def test_403_is_auth_error_not_retried(fake: FakeRegistry) -> None:
    fake.script("PUT", MANIFEST, Reply(403, body=error_json("DENIED", "requested access to the resource is denied")),
                Reply(201))
    client = logged_in(fake)
    with pytest.raises(AuthError) as e:
        with_policy(client, lambda: client.put_manifest("tag", b"{}", "application/json"))
    err = e.value
    assert "HTTP 403" in str(err)
    assert "DENIED" in str(err)
    assert err.hint is not None and "repo" in err.hint
    assert err.exit_code == ExitCode.AUTH
    assert fake.count("PUT", MANIFEST) == 1
    assert client.requests == 1


# -- connection errors ----------------------------------------------------------------------------------


@pytest.fixture
def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_connection_refused_is_transient_and_retried(closed_port: int) -> None:
    client = client_for(f"127.0.0.1:{closed_port}",
                        RetrySettings(attempts=4, initial_wait=0, max_wait=0))
    with pytest.raises(TransientRegistryError) as e:
        with_policy(client, lambda: client.has_blob(DIGEST))
    err = e.value
    assert f"127.0.0.1:{closed_port}" in str(err)
    assert err.exit_code == ExitCode.REGISTRY
    assert client.requests == 4


def test_connection_refused_waits_with_backoff(closed_port: int) -> None:
    client = client_for(f"127.0.0.1:{closed_port}",
                        RetrySettings(attempts=4, initial_wait=0.25, max_wait=10))
    waits: list[float] = []
    client.policy.sleep = waits.append  # type: ignore[method-assign]
    with pytest.raises(TransientRegistryError):
        with_policy(client, lambda: client.has_blob(DIGEST))
    assert waits == [0.25, 0.5, 1.0]
    assert client.requests == 4


def test_connection_refused_at_login(closed_port: int) -> None:
    client = client_for(f"127.0.0.1:{closed_port}")
    with pytest.raises(TransientRegistryError):
        client.login()
    assert client.requests == 2  # https, then the plain-HTTP fallback; login itself never retries


#: What the kubelet v1.37.2 answered when CRIU refused a container's TCP connection on
#: CRI-O v1.36.3 with runc (a real node; paths shortened, the one long line kept whole).
CRIU_REFUSED = (
    'checkpointing of default/tcp/workload failed (rpc error: code = Unknown desc = failed to '
    'checkpoint container 3d76: running "/usr/sbin/runc" ["checkpoint" "--file-locks" '
    '"--image-path" "/var/lib/containers/storage/overlay-containers/3d76/userdata/checkpoint" '
    '"--work-path" "/var/lib/containers/storage/overlay-containers/3d76/userdata" '
    '"--leave-running" "3d76"] failed: `/usr/sbin/runc --root /run/runc checkpoint --file-locks '
    '--image-path /var/lib/containers/storage/overlay-containers/3d76/userdata/checkpoint '
    '--work-path /var/lib/containers/storage/overlay-containers/3d76/userdata --leave-running '
    '3d76` failed: time="2026-12-02T20:46:21Z" level=error msg="criu failed: type NOTIFY errno '
    '0\\nlog file: /var/lib/containers/storage/overlay-containers/3d76/userdata/dump.log"\n'
    ' : exit status 1)')


def test_a_criu_failure_is_final_and_names_its_log() -> None:
    from migrate.adapters.kubelet import runtime_failure

    e = runtime_failure("checkpoint default/tcp/workload on node-a", CRIU_REFUSED)
    assert type(e) is ClusterError  # not transient: the same process state fails again
    assert e.message == (
        "checkpoint default/tcp/workload on node-a: CRIU could not dump it (type NOTIFY errno "
        "0); its log on the node: /var/lib/containers/storage/overlay-containers/3d76/userdata/"
        "dump.log")
    assert e.hint is not None and "/etc/criu/runc.conf" in e.hint and "tcp-close" in e.hint
    # Other runtime failures keep their first line (cut) and stay transient.
    other = runtime_failure("checkpoint x", "checkpointing failed (injected)\nmore")
    assert isinstance(other, TransientClusterError) and other.message.endswith("(injected)")
