"""Build stage: checkpoint archive -> OCI checkpoint image, pushed and verified.

1. validate: open the archive, refuse what CRI-O would refuse, derive annotations;
2. build and push, natively (one streaming pass) or with buildah;
3. verify: read the manifest back and check the digest and the checkpoint annotation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migrate.adapters.checkpoint import Checkpoint
from migrate.adapters.ocicrypt import LayerEncryption, parse_recipients
from migrate.adapters.registry.client import RegistryClient
from migrate.adapters.registry.digest_cache import DigestCache
from migrate.adapters.registry.layout import OciLayout
from migrate.adapters.registry.reference import Reference
from migrate.errors import RegistryError, UsageError
from migrate.pipeline.annotations import (
    CHECKPOINT_NAME,
    CheckpointImageInfo,
    checkpoint_image_info,
)
from migrate.pipeline.choices import Builder, Compression
from migrate.pipeline.native import (
    INDEX,
    MANIFEST,
    LayoutTarget,
    RegistryTarget,
    Target,
    build_native,
)
from migrate.pipeline.timing import Stopwatch
from migrate.settings import Settings


@dataclass(frozen=True)
class BuildRequest:
    """One `migrate build`."""

    archive: Path
    image: Reference | None  # None only with an OCI layout: named after the container
    builder: Builder = Builder.native
    compression: Compression = Compression.none
    push: bool = True
    oci_layout: Path | None = None
    oci_index: bool = False
    containerd: bool = False  # a containerd archive, for containerd 2.1-2.3 (an OCI index)
    encrypt_for: tuple[str, ...] = ()  # --encrypt-for jwe:PUBLIC_KEY_FILE, one per recipient

    def check(self) -> None:
        """Refuse contradictory requests before any work."""
        if self.push and self.oci_layout:
            raise UsageError("--oci-layout writes a local image instead of pushing",
                             hint="add --no-push")
        if not self.push and not self.oci_layout:
            raise UsageError("--no-push needs --oci-layout DIR to put the image somewhere")
        if self.push and self.image is None:
            raise UsageError("say where to push: --image REGISTRY/REPOSITORY[:TAG]",
                             hint="or write an OCI layout: --no-push --oci-layout DIR")
        if self.builder is Builder.buildah and self.compression is Compression.none:
            # containers/image always compresses what buildah pushes (buildah#3904);
            # asking for none would silently give gzip.
            raise UsageError("buildah cannot push uncompressed layers",
                             hint="use --builder native for --compression none, or give "
                             "buildah --compression gzip or zstd")
        if (self.oci_index or self.containerd) and self.builder is Builder.buildah:
            raise UsageError(f"{'--oci-index' if self.oci_index else '--containerd'} is only "
                             "made by the native builder (an OCI index)",
                             hint="use --builder native")


@dataclass
class BuildReport:
    """What was built and where it went (the JSON form of `migrate build`)."""

    image: str
    digest: str
    builder: str
    compression: str
    layer_size: int
    image_size: int
    archive_size: int
    annotations: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)
    destination: str = "registry"
    layer_uploaded: bool = True
    encrypted_for: tuple[str, ...] = ()  # the --encrypt-for recipients (files, not keys)
    criu_stats: dict[str, int] = field(default_factory=dict)
    """The archive's CRIU dump statistics (freezing_time, frozen_time... in us), read
    while it was open for the build: a migration reports them, wherever it built."""

    @property
    def reference(self) -> str:
        """``IMAGE@DIGEST``: what a Pod should name to get exactly this image."""
        return f"{self.image.split('@')[0]}@{self.digest}"

    def to_dict(self) -> dict[str, Any]:
        """Stable JSON keys (schemas/build.schema.json)."""
        return {"image": self.image, "reference": self.reference,
                "pod_image": pod_image(self.reference, bool(self.encrypted_for)),
                "digest": self.digest,
                "builder": self.builder, "compression": self.compression,
                "layer_size": self.layer_size, "image_size": self.image_size,
                "archive_size": self.archive_size, "destination": self.destination,
                "layer_uploaded": self.layer_uploaded,
                "encrypted_for": list(self.encrypted_for),
                "annotations": self.annotations,
                "timings": {k: round(v, 6) for k, v in self.timings.items()}}


def pod_image(reference: str, encrypted: bool) -> str:
    """What a restored Pod names to pull ``reference`` (IMAGE@DIGEST): the same, or for
    an encrypted image IMAGE alone (its tag). Decrypting rewrites the manifest (the
    layers' media types and digests), which containers/image refuses when the pulled
    reference names a digest, before it looks for a key: "layer ... should be decrypted,
    but we can't modify the manifest: Destination specifies a digest" (go.podman.io/image
    v5.38.0 copy/single.go, copy/encryption.go; CRI-O v1.36.3's)."""
    return reference.split("@")[0] if encrypted else reference


def _verify(client: RegistryClient, digest: str, info_name: str) -> dict[str, Any]:
    """Read the pushed manifest back by digest; returns it (index resolved)."""
    accept = f"{MANIFEST}, {INDEX}"
    data = client.get_manifest(digest, accept)
    doc: dict[str, Any] = json.loads(data)
    if doc.get("mediaType") == INDEX:
        doc = json.loads(client.get_manifest(doc["manifests"][0]["digest"], MANIFEST))
    if doc.get("annotations", {}).get(CHECKPOINT_NAME) != info_name:
        raise RegistryError(f"{client.ref}: the pushed manifest lacks {CHECKPOINT_NAME}",
                            hint="the registry altered the manifest; CRI-O would not restore it")
    return doc


def build_image(req: BuildRequest, settings: Settings,
                on_progress: Callable[[int], None] | None = None) -> BuildReport:
    """Run the build stage; ``on_progress`` hears the archive bytes read so far.

    The layer is the archive's tar: a gzip or zstd archive is validated and
    pushed decompressed (compressed again only as ``req.compression`` asks),
    since the image's root must hold the members themselves; the native
    builder streams the very file that was validated.
    """
    req.check()
    # Key files are read before the archive: a bad key fails before any work.
    recipients = parse_recipients(req.encrypt_for)
    timer = Stopwatch()
    with timer.step("validate"):
        ckpt = Checkpoint(req.archive, settings.archive)
    with ckpt:
        with timer.step("validate"):
            info = checkpoint_image_info(ckpt, req.containerd)
        encryption = (LayerEncryption(recipients, settings.registry.chunk_bytes)
                      if recipients else None)
        report = _build(req, settings, ckpt, info, timer, on_progress, encryption)
        report.criu_stats.update(ckpt.stats() or {})
        return report


def _build(req: BuildRequest, settings: Settings, ckpt: Checkpoint, info: CheckpointImageInfo,
           timer: Stopwatch, on_progress: Callable[[int], None] | None,
           encryption: LayerEncryption | None) -> BuildReport:
    archive_size = ckpt.archive.stored_size
    image = req.image or Reference("localhost", f"checkpoint-{info.identity.container}".lower(),
                                   "latest", None)
    client = RegistryClient(image, settings.registry) if req.push else None
    if client is not None:
        with timer.step("login"):
            for attempt in client.policy:
                with attempt:
                    client.login()
    if req.builder is Builder.native:
        target: Target
        if client is not None:
            # An encrypted layer is new on every build (a fresh key): nothing to cache.
            cache = (DigestCache(settings.cache_dir / "layer-digests.json")
                     if settings.cache_dir and encryption is None else None)
            target = RegistryTarget(client, cache)
        else:
            assert req.oci_layout is not None  # BuildRequest.check made sure
            target = LayoutTarget(OciLayout(req.oci_layout))
        result = build_native(req.archive, info, target, tag=image.tag or None,
                              compression=req.compression,
                              chunk_bytes=settings.registry.chunk_bytes,
                              # containerd reads the annotations from the index
                              oci_index=req.oci_index or req.containerd, timer=timer,
                              on_progress=on_progress, fd=ckpt.archive.fd,
                              encryption=encryption)
        digest, layer_size, image_size = result.digest, result.layer.size, result.image_size
        # An OCI layout is written, not uploaded; a registry may have had the layer.
        uploaded = isinstance(target, RegistryTarget) and target.layer_uploaded
        # Content addressing: a manifest stored under the digest of the bytes sent is
        # those bytes, annotations included; reading it back proves nothing more.
        confirmed = isinstance(target, RegistryTarget) and digest in target.confirmed
    else:
        # Imported here: `sh` costs start-up time the native path does not need.
        # buildah gets the archive as it is: `buildah add` unpacks a plain, gzip
        # or zstd tar alike.
        from migrate.adapters.buildah import BuildahPush, build_with_buildah

        reg = settings.registry
        dest = str(image) if client is not None else f"oci:{req.oci_layout}:{image.tag}"
        built = build_with_buildah(req.archive, info.annotations, push=BuildahPush(
            destination=dest, tls_verify=reg.tls_verify, cert_dir=reg.cert_dir,
            authfile=reg.authfile, creds=reg.creds, compression=req.compression,
            encryption_keys=req.encrypt_for))
        timer.timings.update(built.timings)
        digest, layer_size, image_size = built.digest or "", 0, 0
        uploaded, confirmed = client is not None, False
    if client is not None and not confirmed:
        with timer.step("verify"):
            doc = _verify(client, digest, info.identity.container)
        layer_size = layer_size or sum(int(x["size"]) for x in doc["layers"])
        image_size = image_size or layer_size + int(doc["config"]["size"])
    return BuildReport(image=str(image), digest=digest, builder=req.builder,
                       compression=req.compression, layer_size=layer_size,
                       image_size=image_size, archive_size=archive_size,
                       annotations=info.annotations, timings=timer.timings,
                       destination="registry" if client is not None else str(req.oci_layout),
                       layer_uploaded=uploaded, encrypted_for=req.encrypt_for)
