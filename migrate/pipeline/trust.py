"""How a run reached its registry, kept in its journal so that a resume can again.

A run against a plain-HTTP registry (--no-tls-verify), a private CA
(--cert-dir) or a registry needing credentials (--authfile, --creds) must be
resumable without the user remembering each option. The journal keeps the
trust settings, never a secret: TLS verification on or off, the certificate
directory, the credentials file's path, and only *whether* --creds gave
credentials. A resume reuses them; the same options given to it win. The
credentials of --creds cannot come back from the journal: a resume that needs
the registry and was not given them again (nor another --authfile) is refused
before it does anything.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migrate.errors import AuthError
from migrate.settings import RegistrySettings, Secret


def record(registry: RegistrySettings) -> dict[str, Any]:
    """What a journal keeps of ``registry``: no credentials, only whether --creds gave some."""
    return {"tls_verify": registry.tls_verify,
            "cert_dir": str(registry.cert_dir) if registry.cert_dir else None,
            "authfile": str(registry.authfile) if registry.authfile else None,
            "creds": registry.creds is not None}


@dataclass(frozen=True)
class Given:
    """The registry options a resume was given (None: not given)."""

    tls_verify: bool | None = None
    cert_dir: Path | None = None
    authfile: Path | None = None
    creds: tuple[str, Secret] | None = None


def resumed(registry: RegistrySettings, recorded: dict[str, Any], given: Given, *,
            run: str, command: str, needs_registry: bool) -> RegistrySettings:
    """``registry`` as the recorded run had it, with what was ``given`` winning.

    ``run`` names the run in the refusal ("migration ID"), ``command`` is the
    command to give again (``migrate resume ID``); ``needs_registry``: whether
    what is left to do talks to the registry (only then are credentials missed).
    Journals written before trust was recorded have ``{}``: the defaults.
    """
    if (needs_registry and recorded.get("creds") and given.creds is None
            and given.authfile is None):
        raise AuthError(f"{run} logged in to the registry with --creds, and credentials "
                        "are never recorded",
                        hint=f"give them again: {command} --creds USER:PASS (or --authfile "
                        "FILE)")
    tls_verify = given.tls_verify if given.tls_verify is not None else bool(
        recorded.get("tls_verify", True))
    return dataclasses.replace(
        registry, tls_verify=tls_verify,
        cert_dir=given.cert_dir or _path(recorded.get("cert_dir")),
        authfile=given.authfile or _path(recorded.get("authfile")), creds=given.creds)


def _path(value: Any) -> Path | None:
    return Path(value) if isinstance(value, str) and value else None
