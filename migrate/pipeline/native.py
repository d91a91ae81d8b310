"""The native builder: the archive streamed as the one layer, then config and manifest.

The archive is read once: the layer stream hashes and (optionally)
compresses it while it uploads. The tag is written last, so an interrupted
build never leaves a tag pointing at a partial image; an upload session that
fails is cancelled.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from migrate.adapters.registry.client import RegistryClient
from migrate.adapters.registry.digest_cache import DigestCache
from migrate.adapters.registry.layer import Encryption, LayerDigests, LayerStream
from migrate.adapters.registry.layout import OciLayout
from migrate.errors import RegistryError
from migrate.pipeline.annotations import CheckpointImageInfo
from migrate.pipeline.timing import Stopwatch

log = logging.getLogger(__name__)

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"


class Target(Protocol):
    """Where the image goes: a registry or an OCI layout."""

    def upload_layer(self, stream: LayerStream) -> LayerDigests: ...

    def upload_blob(self, data: bytes, digest: str) -> None: ...

    def put_manifest(self, data: bytes, media_type: str, reference: str | None) -> None: ...


class RegistryTarget:
    """Push to a registry repository; retries transient failures by the named policy."""

    def __init__(self, client: RegistryClient, cache: DigestCache | None = None) -> None:
        self.client = client
        self.cache = cache
        self.layer_uploaded = False
        #: Manifests the registry said it stored under the digest of what was sent.
        self.confirmed: set[str] = set()

    def _known_layer(self, stream: LayerStream) -> LayerDigests | None:
        """Digests of this archive from an earlier push, if the registry still has the blob."""
        if self.cache is None or stream.encryption is not None:
            # An encrypted layer is new each time (a fresh key): never one seen before.
            return None
        known = self.cache.get(stream.path, stream.compression)
        if known is None:
            return None
        for attempt in self.client.policy:
            with attempt:
                if self.client.has_blob(known.digest):
                    log.info("registry already has layer %s; not uploading", known.digest)
                    return known
        return None

    def upload_layer(self, stream: LayerStream) -> LayerDigests:
        known = self._known_layer(stream)
        if known is not None:
            return known
        # A retry starts a new session and reads the archive again from the start.
        for attempt in self.client.policy:
            with attempt:
                location = self.client.start_upload()
                try:
                    location = self.client.stream_upload(location, stream)
                    self.client.finish_upload(location, stream.result.digest)
                except BaseException:
                    self.client.cancel_upload(location)
                    raise
        self.layer_uploaded = True
        if self.cache and stream.encryption is None:
            self.cache.put(stream.path, stream.compression, stream.result)
        return stream.result

    def upload_blob(self, data: bytes, digest: str) -> None:
        # No check for the blob first: an image config names its checkpoint's time, so
        # the registry hardly ever has it, and sending a few hundred bytes again costs
        # what asking would.
        for attempt in self.client.policy:
            with attempt:
                self.client.finish_upload(self.client.start_upload(), digest, data)

    def put_manifest(self, data: bytes, media_type: str, reference: str | None) -> None:
        ours = _digest(data)
        for attempt in self.client.policy:
            with attempt:
                stored = self.client.put_manifest(reference or ours, data, media_type)
        if stored and stored != ours:
            raise RegistryError(f"{self.client.ref.registry} stored the {media_type} as "
                                f"{stored}, not as the {ours} that was sent",
                                hint="the registry altered the manifest; CRI-O would not "
                                "restore it")
        if stored:
            self.confirmed.add(stored)


class LayoutTarget:
    """Write into an OCI image layout directory."""

    def __init__(self, layout: OciLayout) -> None:
        self.layout = layout

    def upload_layer(self, stream: LayerStream) -> LayerDigests:
        tmp = self.layout.put_stream(stream)
        self.layout.commit_blob(tmp, stream.result.digest)
        return stream.result

    def upload_blob(self, data: bytes, digest: str) -> None:
        self.layout.put_blob(data)

    def put_manifest(self, data: bytes, media_type: str, reference: str | None) -> None:
        digest = self.layout.put_blob(data)
        if reference is not None:
            self.layout.tag({"mediaType": media_type, "digest": digest, "size": len(data)},
                            reference)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def _descriptor(layer: LayerDigests) -> dict[str, Any]:
    desc: dict[str, Any] = {"mediaType": layer.media_type, "digest": layer.digest,
                            "size": layer.size}
    if layer.annotations:
        desc["annotations"] = layer.annotations  # an encrypted layer's wrapped key
    return desc


@dataclass(frozen=True)
class NativeResult:
    """What the native build produced."""

    digest: str  # what the tag points at (the manifest, or the index with --oci-index)
    manifest_digest: str
    layer: LayerDigests
    image_size: int  # config + layer + manifest bytes


def build_native(archive: Path, info: CheckpointImageInfo, target: Target, *, tag: str | None,
                 compression: str, chunk_bytes: int, oci_index: bool, timer: Stopwatch,
                 on_progress: Callable[[int], None] | None = None,
                 fd: int | None = None, encryption: Encryption | None = None) -> NativeResult:
    """Stream the layer, then write config, manifest (and index) to ``target``.

    ``fd``: read the layer's tar from this descriptor instead of opening
    ``archive`` (which still identifies it in the digest cache).
    ``encryption``: encrypt the layer (ocicrypt's format) in the same pass.
    """
    with timer.step("layer"):
        layer = target.upload_layer(LayerStream(archive, compression, chunk_bytes, on_progress,
                                                fd=fd, encryption=encryption))
    config = _json({
        "created": info.created,
        "architecture": info.architecture or "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        "history": [{"created": info.created, "created_by": "migrate build",
                     "comment": f"checkpoint of container {info.identity.container}"}],
    })
    config_digest = _digest(config)
    with timer.step("config"):
        target.upload_blob(config, config_digest)
    manifest = _json({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [_descriptor(layer)],
        "annotations": info.annotations,
    })
    manifest_digest = _digest(manifest)
    with timer.step("manifest"):
        if not oci_index:
            target.put_manifest(manifest, MANIFEST, tag)
            top = manifest_digest
        else:
            # containerd 2.1-2.3 reads checkpoint annotations from the index; CRI-O
            # resolves the index to the manifest and reads them there.
            target.put_manifest(manifest, MANIFEST, None)
            index = _json({
                "schemaVersion": 2,
                "mediaType": INDEX,
                "manifests": [{"mediaType": MANIFEST, "digest": manifest_digest,
                               "size": len(manifest),
                               "platform": {"architecture": info.architecture or "amd64",
                                            "os": "linux"}}],
                "annotations": info.annotations,
            })
            target.put_manifest(index, INDEX, tag)
            top = _digest(index)
    return NativeResult(top, manifest_digest, layer, len(config) + layer.size + len(manifest))
