"""Run the real registry server (distribution, Debian's `docker-registry`) for tests.

    with Registry(tmp / "reg", tls=(cert, key), htpasswd={"alice": "pw"}) as reg:
        reg.url     # https://127.0.0.1:40123
        reg.host    # 127.0.0.1:40123
        reg.restart()   # same port, same storage, same upload secret
        reg.kill()      # SIGKILL: "the registry died mid-upload"

The server listens on 127.0.0.1 (or, with `address=`, one of the test world's own
198.18 addresses: pods on a real node reach the host there, never its loopback),
on a free port chosen at start (retried if another process grabs it first),
stores blobs under `storage` (default `STATE_DIR/storage`) with deletes enabled,
and logs to `STATE_DIR/registry.log` (appended across restarts). start() returns
once the server has logged that it is listening *and* answers `GET /v2/`, within
`ready_timeout` seconds; failures raise RegistryError with the tail of that log.

Every process is reaped: by stop()/close()/the context manager, and, failing
that, by a weakref finalizer when the object is garbage collected or the
interpreter exits.

Auth, one of:
    htpasswd={user: password}   Basic auth (bcrypt hashes, as distribution requires)
    token=TokenAuth(...)        Bearer tokens from e2e.services.token_server (or any issuer)
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import os
import re
import secrets
import signal
import ssl
import subprocess
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import bcrypt
import yaml

from e2e.services.addresses import LOOPBACK, TEST_HOSTS, free_port
from e2e.services.pki import CertPair, write_private

__all__ = ["LOOPBACK", "Registry", "RegistryError", "TokenAuth", "free_port"]

#: Where a registry may listen: loopback, or the benchmarking block the test world
#: takes its own hosts from (e2e/cluster/nodehost.py's NODE_HOSTS).
_TEST_ADDRESSES = (ipaddress.ip_network("127.0.0.0/8"), TEST_HOSTS)
_POLL_INTERVAL = 0.05
_PORT_ATTEMPTS = 5


class RegistryError(RuntimeError):
    """The registry could not be started (the message carries its log tail)."""


@dataclass(frozen=True)
class TokenAuth:
    """distribution's `auth.token` section.

    realm: URL clients fetch tokens from (e.g. TokenServer.realm).
    service: the token audience (`aud`) the registry accepts.
    issuer: the token issuer (`iss`) the registry accepts.
    rootcertbundle: PEM bundle of CAs allowed to sign the tokens' `x5c` certificates.
    """

    realm: str
    service: str
    issuer: str
    rootcertbundle: Path


def _reap(proc: subprocess.Popen[bytes], log: IO[bytes], grace: float) -> None:
    """Terminate `proc` (SIGTERM, then SIGKILL after `grace` s) and close its log."""
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        log.close()


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class Registry:
    """One `docker-registry serve` process on 127.0.0.1, with its config and state.

    address: the listen address, 127.0.0.1 unless a test needs pods on a real node
        to reach the registry: then an address of the test world's own (198.18/16)
        that this host holds; anything else is refused with ValueError.

    state_dir: where config.yml, registry.log and htpasswd go (created if needed).
    tls: (certificate, key) PEM paths, or a CertPair: serve HTTPS.
    htpasswd: user -> password for Basic auth (mutually exclusive with `token`).
    token: Bearer token auth settings.
    storage: filesystem storage root (default: STATE_DIR/storage).
    port: fixed port; default: a free one picked at the first start and kept
        across restarts.
    ready_timeout: seconds start() waits for the server to answer.
    extra_config: deep-merged over the generated configuration (tests that need
        an unusual setting). The listen address stays ADDRESS:PORT whatever it
        says; `http.debug.addr` must be on 127.0.0.1; `proxy`, `notifications` and
        `redis` (which connect out) are refused with ValueError.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        tls: tuple[Path, Path] | CertPair | None = None,
        htpasswd: Mapping[str, str] | None = None,
        token: TokenAuth | None = None,
        storage: Path | None = None,
        port: int | None = None,
        ready_timeout: float = 10.0,
        extra_config: Mapping[str, Any] | None = None,
        address: str = LOOPBACK,
    ) -> None:
        if not any(ipaddress.ip_address(address) in net for net in _TEST_ADDRESSES):
            raise ValueError(f"a test registry listens on loopback or 198.18/16, not {address}")
        self.address = address
        if htpasswd is not None and token is not None:
            raise ValueError("choose one of htpasswd= and token= auth")
        self.state_dir = Path(state_dir)
        self.storage = Path(storage) if storage is not None else self.state_dir / "storage"
        if isinstance(tls, CertPair):
            tls = (tls.cert, tls.key)
        self.tls: tuple[Path, Path] | None = tls
        self.htpasswd = dict(htpasswd) if htpasswd is not None else None
        self.token = token
        self.ready_timeout = ready_timeout
        self.extra_config = dict(extra_config or {})
        self._port = port
        self._port_fixed = port is not None
        # Upload session state is HMAC'ed with this secret: keeping it across
        # restarts keeps in-flight upload URLs valid, as on a real deployment.
        self._secret = secrets.token_hex(16)
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    # -- addresses -----------------------------------------------------------------

    @property
    def port(self) -> int:
        """The listening port (known once the registry has been started)."""
        if self._port is None:
            raise RuntimeError("registry not started yet: no port chosen")
        return self._port

    @property
    def host(self) -> str:
        """`ADDRESS:PORT` (127.0.0.1:PORT), the registry part of an image reference."""
        return f"{self.address}:{self.port}"

    @property
    def scheme(self) -> str:
        """`https` with TLS, else `http`."""
        return "https" if self.tls is not None else "http"

    @property
    def url(self) -> str:
        """Base URL, e.g. `https://127.0.0.1:40123` (the API is under /v2/)."""
        return f"{self.scheme}://{self.host}"

    @property
    def config_path(self) -> Path:
        return self.state_dir / "config.yml"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "registry.log"

    @property
    def htpasswd_path(self) -> Path:
        return self.state_dir / "htpasswd"

    @property
    def pid(self) -> int | None:
        """The server's pid while running, else None."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> Registry:
        """Start the server and wait until it answers; raise RegistryError if it cannot."""
        if self.running:
            raise RuntimeError(f"registry already running (pid {self.pid})")
        self._release()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(parents=True, exist_ok=True)
        if self.htpasswd is not None:
            self._write_htpasswd()
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            if self._port is None:
                self._port = free_port(self.address)
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._write_config()
            self._spawn()
            outcome = self._wait_ready(offset)
            if outcome == "ready":
                return self
            conflict = "address already in use" in self._log_since(offset)
            self._release()
            if conflict and not self._port_fixed and attempt < _PORT_ATTEMPTS:
                self._port = None  # someone took the port between our probe and bind
                continue
            raise RegistryError(
                f"docker-registry {outcome} on {self.address}:{self._port}"
                f" (config {self.config_path}); log tail:\n{self.log_tail()}"
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the server, wait up to `timeout` s, then SIGKILL. Idempotent."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._release()

    def kill(self) -> None:
        """SIGKILL the server at once (no graceful shutdown), e.g. mid-upload."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._release()

    def restart(self) -> Registry:
        """Stop (if running) and start again on the same port with the same storage."""
        self.stop()
        if self._port is not None:
            self._port_fixed = True  # clients hold URLs with this port
        return self.start()

    def close(self) -> None:
        """Stop the server (alias of stop(), for contextlib.closing and fixtures)."""
        self.stop()

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines of the registry's log ("" if there is none)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- internals -----------------------------------------------------------------

    def _release(self) -> None:
        """Reap the current process (if any) and close its log handle."""
        if self._finalizer is not None:
            self._finalizer()  # runs _reap at most once
        self._finalizer = None
        self._proc = None

    def _spawn(self) -> None:
        # The registry reads REGISTRY_* variables as config overrides: drop them so
        # the caller's environment cannot move the listener or storage.
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed by _reap
        try:
            proc = subprocess.Popen(
                ["docker-registry", "serve", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.state_dir,
            )
        except BaseException:
            log.close()
            raise
        self._proc = proc
        self._finalizer = weakref.finalize(self, _reap, proc, log, 5.0)

    def _wait_ready(self, log_offset: int) -> str:
        """Poll until ready; return "ready", "exited (status N)" or "not ready after Ns"."""
        assert self._proc is not None
        listening = re.compile(rf"listening on {re.escape(self.host)}(?!\d)")
        deadline = time.monotonic() + self.ready_timeout
        while True:
            status = self._proc.poll()
            if status is not None:
                return f"exited (status {status}) before it was ready"
            # The log line proves *our* process bound the port; the probe, that it serves.
            if listening.search(self._log_since(log_offset)) and self._probe():
                return "ready"
            if time.monotonic() >= deadline:
                return f"not ready after {self.ready_timeout:g} s"
            time.sleep(_POLL_INTERVAL)

    def _probe(self) -> bool:
        conn: http.client.HTTPConnection
        if self.tls is not None:
            # Readiness only: certificate checks are the tests' business.
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            conn = http.client.HTTPSConnection(self.address, self.port, timeout=1, context=ctx)
        else:
            conn = http.client.HTTPConnection(self.address, self.port, timeout=1)
        try:
            conn.request("GET", "/v2/")
            response = conn.getresponse()
            response.read()
            return response.status in (200, 401)
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def _log_since(self, offset: int) -> str:
        with contextlib.suppress(FileNotFoundError), open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
        return ""

    def _write_htpasswd(self) -> None:
        assert self.htpasswd is not None
        # Cost 4 (bcrypt's minimum): the registry hashes on every request.
        lines = [
            f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
            for user, pw in self.htpasswd.items()
        ]
        write_private(self.htpasswd_path, "".join(lines).encode())

    def config(self) -> dict[str, Any]:
        """The configuration the next start() writes (for inspection in tests)."""
        http_section: dict[str, Any] = {
            "addr": self.host,
            "secret": self._secret,
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        }
        if self.tls is not None:
            http_section["tls"] = {"certificate": str(self.tls[0]), "key": str(self.tls[1])}
        config: dict[str, Any] = {
            "version": "0.1",
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
                # Upload purging would race with "upload interrupted by a restart" tests.
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": http_section,
            "health": {"storagedriver": {"enabled": False}},
        }
        if self.htpasswd is not None:
            config["auth"] = {
                "htpasswd": {"realm": "migrate-test-registry", "path": str(self.htpasswd_path)}
            }
        elif self.token is not None:
            config["auth"] = {
                "token": {
                    "realm": self.token.realm,
                    "service": self.token.service,
                    "issuer": self.token.issuer,
                    "rootcertbundle": str(self.token.rootcertbundle),
                }
            }
        config = _deep_merge(config, self.extra_config)
        # Never listen on, or connect to, anything but the address chosen above.
        config["http"]["addr"] = self.host
        debug_addr = str(config["http"].get("debug", {}).get("addr", f"{LOOPBACK}:0"))
        if not debug_addr.startswith(f"{LOOPBACK}:"):
            raise ValueError(f"http.debug.addr must be on {LOOPBACK}, not {debug_addr!r}")
        outbound = sorted({"proxy", "notifications", "redis"} & config.keys())
        if outbound:
            raise ValueError(f"extra_config sections that connect out are not allowed: {outbound}")
        return config

    def _write_config(self) -> None:
        write_private(self.config_path, yaml.safe_dump(self.config(), sort_keys=False).encode())
