"""Image references: ``[registry/]repository[:tag][@digest]``, parsed as container tools do."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from migrate.errors import UsageError

DOCKER_HUB = "docker.io"
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


#: What to do about a registry no pod reaches (`Reference.loopback`).
REACH_HINT = "give --registry an address or name the cluster's pods reach"


def unreachable_from_pods(registry: str) -> str:
    """Why a pod cannot reach ``registry``, a loopback one: the clause errors end with."""
    return f"cannot reach the registry {registry}: a loopback address is the pod's own"


@dataclass(frozen=True)
class Reference:
    """A parsed image reference."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def api_host(self) -> str:
        """Where the registry API lives (Docker Hub's API host differs from its name)."""
        return "registry-1.docker.io" if self.registry == DOCKER_HUB else self.registry

    @property
    def loopback(self) -> bool:
        """Whether the registry is on a loopback address (localhost, 127/8, ::1): every
        pod has a loopback of its own, so no pod reaches such a registry."""
        host = (self.registry[1:].partition("]")[0] if self.registry.startswith("[")
                else self.registry.rpartition(":")[0] or self.registry)
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    @property
    def name(self) -> str:
        """``registry/repository``."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        out = self.name + (f":{self.tag}" if self.tag else "")
        return out + (f"@{self.digest}" if self.digest else "")


def _no_userinfo(value: str, what: str, *, reference: bool) -> None:
    """Refuse USER:PASSWORD@ before the host (URL habit), naming none of it: the value
    would otherwise be echoed in this error, and in others later."""
    host = value.partition("://")[2] if "://" in value else value
    first, slash, _ = host.partition("/")
    # Without a "/" after it, an "@" in an image reference starts its digest (app@sha256:..).
    if "@" in first and (slash or not reference):
        raise UsageError(f"{what} holds credentials before its host (USER:PASSWORD@...): "
                         "not accepted, and not shown here",
                         hint="give the host alone, and the credentials with --creds USER:PASSWORD"
                         " or --authfile FILE")


def _bad(ref: str, why: str) -> UsageError:
    return UsageError(f"invalid image reference {ref!r}: {why}",
                      hint="use REGISTRY/REPOSITORY[:TAG], e.g. registry.example:5000/ckpt/app:v1")


def parse_reference(ref: str) -> Reference:
    """Parse ``ref``; a name without a registry means Docker Hub, as in docker and podman."""
    _no_userinfo(ref, "the image reference", reference=True)
    rest, _, digest = ref.partition("@")
    if digest and not _DIGEST.match(digest):
        raise _bad(ref, "the digest must be sha256:<64 hex digits>")
    first, _, remainder = rest.partition("/")
    if remainder and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, remainder
    else:
        registry, path = DOCKER_HUB, rest
        if "/" not in path:
            path = f"library/{path}"
    tag = None
    if ":" in path.rsplit("/", 1)[-1]:
        path, tag = path.rsplit(":", 1)
        if not _TAG.match(tag):
            raise _bad(ref, f"the tag {tag!r} is not valid")
    if not path or not all(_COMPONENT.match(c) for c in path.split("/")):
        raise _bad(ref, "repository names are lower-case letters, digits and . _ - separators")
    if not tag and not digest:
        tag = "latest"
    return Reference(registry, path, tag, digest or None)


def check_prefix(value: str, option: str = "--registry") -> str:
    """A ``HOST[:PORT]/REPOSITORY`` prefix as given to --registry, checked before it is
    used to name images: a URL (``http://host/repo``) would otherwise fail later, on an
    image reference the user never typed."""
    _no_userinfo(value, option, reference=False)
    scheme, sep, rest = value.partition("://")
    if sep:
        plain = " (plain HTTP: add --no-tls-verify)" if scheme.lower() == "http" else ""
        raise UsageError(f"{option} {value}: give HOST[:PORT]/REPOSITORY, without "
                         f"{scheme}://", hint=f"{option} {rest.rstrip('/')}{plain}")
    host = value.partition("/")[0]
    if not host or ("." not in host and ":" not in host and host != "localhost"):
        raise UsageError(f"{option} {value!r} does not start with a registry host",
                         hint="use HOST[:PORT][/REPOSITORY], e.g. registry.example:5000/ckpt")
    return value.rstrip("/")
