"""Container images on the simulated nodes: references, registry settings, credentials
and each node's image store.

Only registries on 127.0.0.1 are contacted (registry_pull.py does the real
OCI distribution protocol with urllib3). Any other registry
(`docker.io/library/busybox`, `registry.example/...`) is never reached: its
images count as already on every node ("pre-loaded"), so pods using them
start as they always did, with no network at all.

The cluster-wide registry settings are `RegistryConfig`, from
`Cluster(registries=...)`:

    RegistryConfig(insecure=("127.0.0.1:5000",),  # plain HTTP (CRI-O's insecure_registries)
                   ca_files=(Path("ca.crt"),),     # PEM CAs trusted for HTTPS, besides the system's
                   timeout=10.0)                   # seconds to connect, and per read

A node keeps what it pulled under STATE/nodes/NODE/var/lib/containers/storage/
(blobs by digest, mode 0600: checkpoint images hold process memory);
`ImageStore.present()` answers the kubelet's "already present on machine".
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.services.addresses import TEST_HOSTS

__all__ = [
    "LOOPBACK",
    "Credential",
    "ImageRef",
    "Layer",
    "PulledImage",
    "RegistryConfig",
    "contactable",
    "credentials_for",
    "parse_image",
    "preloaded",
]

#: Where the node agents' kubelets pull from: loopback, or the test world's own 198.18
#: hosts (a registry that pods must reach listens on one this host holds).
LOOPBACK = "127.0.0.1"


def contactable(host: str) -> bool:
    """Whether a node agent may connect to ``host``: 127.0.0.1 or an address of 198.18/16."""
    try:
        return host == LOOPBACK or ipaddress.ip_address(host) in TEST_HOSTS
    except ValueError:
        return False
_DEFAULT_REGISTRY = "docker.io"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_HOST = re.compile(r"^(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9a-fA-F:]+\])(?::\d+)?$")


@dataclass(frozen=True)
class RegistryConfig:
    """How the kubelets reach registries on 127.0.0.1.

    insecure: `host:port` entries spoken to over plain HTTP (CRI-O's
        `insecure_registries`); every other registry is HTTPS, verified.
    ca_files: PEM files of CAs trusted for HTTPS registries and token servers,
        besides the system's.
    timeout: seconds to connect, and to wait for each read.
    """

    insecure: tuple[str, ...] = ()
    ca_files: tuple[Path, ...] = ()
    timeout: float = 10.0

    def is_insecure(self, registry: str) -> bool:
        """Whether `registry` (host:port) is spoken to over plain HTTP."""
        return registry in self.insecure


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference: `registry/repository[:tag][@digest]`."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reachable(self) -> bool:
        """Whether the registry is one a node agent contacts (`contactable`)."""
        return contactable(self.registry.rsplit(":", 1)[0])

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest if given, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def name(self) -> str:
        """`registry/repository`."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        digest = f"@{self.digest}" if self.digest else ""
        return f"{self.name}{tag}{digest}"


def parse_image(image: str) -> ImageRef:
    """Parse `image` as the kubelet and CRI-O do (docker.io and `library/` implied,
    `latest` when neither tag nor digest); ValueError "invalid reference format"."""
    rest, _, digest = image.partition("@")
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, remainder
    else:
        registry, path = _DEFAULT_REGISTRY, rest
    repository, tag = path, None
    if ":" in path.rsplit("/", 1)[-1]:
        repository, _, tag = path.rpartition(":")
    if registry == _DEFAULT_REGISTRY and "/" not in repository:
        repository = f"library/{repository}"
    if not _HOST.match(registry) or not _REPOSITORY.match(repository) \
            or (tag is not None and not _TAG.match(tag)) \
            or (digest and not _DIGEST.match(digest)) or image.endswith("@"):
        raise ValueError("invalid reference format")
    if tag is None and not digest:
        tag = "latest"
    return ImageRef(registry, repository, tag, digest or None)


@dataclass(frozen=True)
class Credential:
    """A user and password for one registry (from an imagePullSecret)."""

    username: str
    password: str

    def basic(self) -> str:
        """The `Authorization: Basic ...` value."""
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


def _auth_key_matches(key: str, ref: ImageRef) -> bool:
    # The kubelet's keyring: the key is a URL or host[:port][/path]; the host
    # and port must match and the path must prefix the repository.
    key = re.sub(r"^[a-z]+://", "", key.strip()).rstrip("/")
    host, _, path = key.partition("/")
    if host in ("index.docker.io", "registry-1.docker.io"):
        host = _DEFAULT_REGISTRY
    if path in ("v1", "v2"):
        path = ""
    return host == ref.registry and (not path or f"{ref.repository}/".startswith(f"{path}/"))


def _credential(entry: Any) -> Credential | None:
    if not isinstance(entry, dict):
        return None
    if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
        return Credential(entry["username"], entry["password"])
    try:
        user, sep, password = base64.b64decode(str(entry.get("auth", ""))).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return Credential(user, password) if sep else None


def credentials_for(ref: ImageRef, configs: Iterable[Mapping[str, Any]]) -> list[Credential]:
    """The credentials docker config documents (`{"auths": {...}}` or the older
    dockercfg map) hold for `ref`, in order; the kubelet tries each in turn."""
    out: list[Credential] = []
    for config in configs:
        auths = config.get("auths", config)
        if not isinstance(auths, Mapping):
            continue
        for key, entry in auths.items():
            found = _credential(entry)
            if found is not None and _auth_key_matches(str(key), ref) and found not in out:
                out.append(found)
    return out


@dataclass(frozen=True)
class Layer:
    """One layer blob as the manifest describes it, and where the node keeps it."""

    digest: str
    media_type: str
    size: int
    diff_id: str | None
    path: Path | None = None


@dataclass
class PulledImage:
    """What a node has of an image after a pull.

    digest: what the reference resolved to at the registry (an index's digest
        when the tag names an index); image_id: the config digest (CRI-O's
        image ID); annotations: the OCI manifest's (Docker manifests have none);
        top_annotations: those of the document the reference named, an index's
        or the manifest's (what containerd reads, parsing either as an index).
    """

    image: str
    ref: ImageRef
    digest: str
    image_id: str
    media_type: str
    annotations: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    layers: list[Layer] = field(default_factory=list)
    top_annotations: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Bytes of the layers as pulled (what the kubelet reports as the image size)."""
        return sum(layer.size for layer in self.layers)

    @property
    def repo_digest(self) -> str:
        """`registry/repository@digest`: the containerStatuses' imageID."""
        return f"{self.ref.name}@{self.digest}"

    @property
    def container_config(self) -> dict[str, Any]:
        """The image config's `config` (Entrypoint, Cmd, Env...)."""
        inner = self.config.get("config")
        return inner if isinstance(inner, dict) else {}


def preloaded(image: str, ref: ImageRef) -> PulledImage:
    """An image of a registry the node agents never contact: present on every node, with
    digests derived from the reference (as pods' imageIDs always were)."""
    digest = "sha256:" + hashlib.sha256(image.encode()).hexdigest()
    image_id = "sha256:" + hashlib.sha256(b"config:" + image.encode()).hexdigest()
    # A plausible, stable size (4-68 MiB) for the kubelet's "Image size" message.
    size = 4 * 2**20 + int(digest[7:15], 16) % (64 * 2**20)
    return PulledImage(image, ref, digest, image_id, "application/vnd.oci.image.manifest.v1+json",
                       layers=[Layer(digest, "application/vnd.oci.image.layer.v1.tar+gzip",
                                     size, None)])


NODE_STATUS_MAX_IMAGES = 50  # the kubelet's default nodeStatusMaxImages


class ImageIndex:
    """The images a node holds, by the exact image string pods name (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._images: dict[str, PulledImage] = {}

    def get(self, image: str) -> PulledImage | None:
        """The image if the node has it, else None."""
        with self._lock:
            return self._images.get(image)

    def holding(self, name: str, storage_id: str) -> PulledImage | None:
        """What a CRI-O restore creates its container on: the image whose ID is
        `storage_id` (config.dump's rootfsImageRef), or without one the image pulled as
        `name` (rootfsImageName: archives of CRI-O before rootfsImageRef), else None."""
        with self._lock:
            if storage_id:
                return next((i for i in self._images.values()
                             if i.image_id == f"sha256:{storage_id}"), None)
            return next((i for i in self._images.values()
                         if name in (i.image, i.repo_digest)), None)

    def name_of(self, image_id: str) -> str | None:
        """The name CRI-O shows for the image ``image_id`` as a restored container's
        image: the first of its names that has a tag, else its first (digest) name, in the
        order the node got them (internal/storage/image.go parseImageNames, v1.36.3)."""
        with self._lock:
            names = [i.image for i in self._images.values() if i.image_id == image_id]
        return next((n for n in names if "@" not in n), names[0] if names else None)

    def storage_id(self, repo_digest: str) -> str | None:
        """The ID (64 hex digits, CRI-O's storage ID) of the image a container reports
        as its imageID, REPO@DIGEST; None if the node holds no such image."""
        with self._lock:
            found = next((i for i in self._images.values() if i.repo_digest == repo_digest),
                         None)
        return found.image_id.removeprefix("sha256:") if found is not None else None

    def put(self, pulled: PulledImage) -> bool:
        """Record an image now on the node; whether it is new here."""
        with self._lock:
            new = pulled.image not in self._images
            self._images[pulled.image] = pulled
            return new

    def listed(self, most: int = NODE_STATUS_MAX_IMAGES) -> list[dict[str, Any]]:
        """The Node's status.images, as a kubelet reports them: each image's names (its
        REPO@DIGEST and the reference it was pulled by), largest first, at most ``most``
        (the kubelet's nodeStatusMaxImages, 50 by default)."""
        with self._lock:
            held = sorted(self._images.values(), key=lambda i: i.size, reverse=True)
        return [{"names": [i.repo_digest, i.image], "sizeBytes": i.size} for i in held[:most]]


def dockerconfig_of(secret: Mapping[str, Any]) -> dict[str, Any] | None:
    """The docker config document a kubernetes.io/dockerconfigjson (or dockercfg) Secret
    holds, or None for any other Secret."""
    data = secret.get("data") or {}
    key = {"kubernetes.io/dockerconfigjson": ".dockerconfigjson",
           "kubernetes.io/dockercfg": ".dockercfg"}.get(str(secret.get("type")))
    if key is None or not isinstance(data.get(key), str):
        return None
    try:
        document = json.loads(base64.b64decode(data[key]))
    except (ValueError, UnicodeDecodeError):
        return None
    return document if isinstance(document, dict) else None
