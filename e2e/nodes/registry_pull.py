"""A node's image pulls from registries on 127.0.0.1: the OCI distribution protocol over
real HTTP (urllib3), as CRI-O's containers/image does it.

1. ping `GET /v2/`; a 401 names the scheme: Basic (credentials sent as they
   are) or Bearer (a token fetched from the realm, which must be on
   127.0.0.1 too, with the credentials as Basic auth);
2. the manifest, accepting OCI manifests and indexes and Docker v2 manifests
   and lists; an index resolves to its linux/amd64 manifest; a digest in the
   reference must match what came back;
3. the config blob, then each layer (none, gzip or zstd), digest-verified
   while streamed and unpacked to an uncompressed tar whose digest must match
   the config's `rootfs.diff_ids`. A node agent holds no private keys: a
   layer whose media type ends in `+encrypted` fails as on CRI-O with an
   empty `decryption_keys_path` (the real one decrypts: realnode.py).

Errors are `PullError`s worded as CRI-O reports them through the kubelet
(`initializing source docker://...: ...`: the kubelet's CRI client drops gRPC's
`rpc error: code = Unknown desc =`, k8s.io/cri-client v0.37.2 remote_image.go).
A refused connection is marked (`refused`): CRI-O v1.36.3 then prefixes
`RegistryUnavailable: ` (server/image_pull.go, errors.Is ECONNREFUSED), which
the kubelet turns into its own waiting reason (image_manager.py).
CRI-O from 1.36 tries a failure other than a network error again as an OCI
artifact and names both, and words a network error `unable to pull image: ...`
(`PullError.in_crio_store`, runtime_releases.CRIO_ARTIFACT_FALLBACK_FROM;
internal/storage/image.go).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import ssl
import tarfile
import threading
import urllib.parse
import zlib
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import urllib3
import zstandard

from e2e.nodes.images import (
    Credential,
    ImageRef,
    Layer,
    PulledImage,
    RegistryConfig,
    contactable,
)

__all__ = ["MANIFEST_TYPES", "PullError", "Puller"]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)
_LAYER_CODECS = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
}
_CHUNK = 1024 * 1024
#: distribution's errcode default messages (what containers/image shows alone).
_DEFAULT_MESSAGES = {
    "MANIFEST_UNKNOWN": "manifest unknown", "UNAUTHORIZED": "authentication required",
    "DENIED": "requested access to the resource is denied",
    "NAME_UNKNOWN": "repository name not known to registry",
    "BLOB_UNKNOWN": "blob unknown to registry", "TOOMANYREQUESTS": "too many requests",
}
_MAX_DOCUMENT = 4 * 1024 * 1024


class PullError(Exception):
    """A failed pull; str() is what the kubelet shows (waiting message, event);
    ``refused``: the registry refused the connection; ``network``: the failure is one
    Go's HTTP client reports as a net.Error (no answer, or no TLS); ``at_source``: it
    came before the manifest was read (the registry's ping, the token, the manifest);
    ``cause``: what the image source said, without where (`initializing source ...: `)."""

    def __init__(self, message: str, *, refused: bool = False, network: bool = False,
                 at_source: bool = False, cause: str = "") -> None:
        super().__init__(message)
        self.refused = refused
        self.network = network or refused
        self.at_source = at_source
        self.cause = cause or message

    def in_crio_store(self) -> PullError:
        """The error as the image store of a CRI-O that tries a failed pull again as an
        OCI artifact returns it (runtime_releases.CRIO_ARTIFACT_FALLBACK_FROM): a network
        error is not tried again, only wrapped; otherwise the same image source fails
        again, under the artifact store's words."""
        if self.network:
            return PullError(f"unable to pull image: {self}", refused=self.refused,
                             network=True, at_source=self.at_source, cause=self.cause)
        # The artifact store reads the manifest first: what failed before it fails there
        # again; past it, the manifest shows an image (ociartifact/store.go).
        retried = (f"get manifest from ref: create image source: {self.cause}" if self.at_source
                   else "reference is a container image, not an OCI artifact")
        return PullError(f"unable to pull image or OCI artifact: pull image err: {self}; "
                         f"artifact err: image reference: {retried}")


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _registry_error(body: bytes, status: int) -> str:
    # containers/image's wording of a registry's first error: "code: message",
    # or the message alone when it is the code's default one (then redundant).
    try:
        first = (json.loads(body).get("errors") or [])[0]
        code, message = str(first.get("code", "")), str(first.get("message", ""))
    except (ValueError, AttributeError, IndexError, TypeError):
        return f"invalid status code from registry {status} ({HTTPStatus(status).phrase})"
    if _DEFAULT_MESSAGES.get(code) == message:
        return message
    return f"{code.lower().replace('_', ' ')}: {message}"


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', rest)}
    return scheme.lower(), params


def _network_error(e: urllib3.exceptions.HTTPError, ref: ImageRef) -> str:
    # Go's net/http wording. (NewConnectionError is a ConnectTimeoutError in urllib3 2.)
    if isinstance(e, urllib3.exceptions.NewConnectionError):
        refused = "refused" in str(e).lower()
        return f"dial tcp {ref.registry}: " + ("connect: connection refused" if refused
                                               else str(e.__cause__ or e))
    if isinstance(e, urllib3.exceptions.ConnectTimeoutError):
        return f"dial tcp {ref.registry}: i/o timeout"
    if isinstance(e, urllib3.exceptions.ReadTimeoutError):
        return "net/http: request canceled (Client.Timeout exceeded while awaiting headers)"
    return str(e)


def _ssl_context(config: RegistryConfig) -> ssl.SSLContext:
    context = ssl.create_default_context()
    for ca in config.ca_files:
        context.load_verify_locations(cafile=str(ca))
    return context


class _Decompressor:
    """Streams a layer: the compressed digest, the unpacked bytes and their digest."""

    def __init__(self, codec: str, out: Any) -> None:
        self.blob, self.diff = hashlib.sha256(), hashlib.sha256()
        self.out = out
        self._feed: Callable[[bytes], bytes] = lambda b: b
        if codec == "gzip":
            self._feed = zlib.decompressobj(wbits=47).decompress
        elif codec == "zstd":
            self._feed = zstandard.ZstdDecompressor().decompressobj().decompress

    def write(self, chunk: bytes) -> None:
        self.blob.update(chunk)
        data = self._feed(chunk)
        self.diff.update(data)
        self.out.write(data)


class Puller:
    """Pulls images for one node into `root` (its var/lib/containers/storage).

    stopped: set when the node stops; pulls in progress end early.
    """

    def __init__(self, root: Path, config: RegistryConfig, stopped: threading.Event) -> None:
        self.root = root
        self.config = config
        self.stopped = stopped
        self._http = urllib3.PoolManager(
            ssl_context=_ssl_context(config), retries=False,
            timeout=urllib3.Timeout(connect=config.timeout, read=config.timeout))
        self._lock = threading.Lock()
        self._layers: dict[str, Path] = {}  # compressed digest -> unpacked tar

    def close(self) -> None:
        """Drop pooled connections."""
        self._http.clear()

    # -- HTTP -------------------------------------------------------------------------

    def _url(self, ref: ImageRef, path: str) -> str:
        scheme = "http" if self.config.is_insecure(ref.registry) else "https"
        return f"{scheme}://{ref.registry}{path}"

    def _request(self, ref: ImageRef, url: str, headers: dict[str, str],
                 stream: bool = False) -> urllib3.BaseHTTPResponse:
        host = urllib.parse.urlsplit(url).hostname
        if host is None or not contactable(host):
            raise PullError(f"refusing to contact {host}: only 127.0.0.1 and 198.18/16 are "
                            "reachable")
        try:
            return self._http.request("GET", url, headers=headers, preload_content=not stream,
                                      redirect=False)
        except urllib3.exceptions.SSLError as e:
            reason = str(e)
            if "WRONG_VERSION_NUMBER" in reason or "record layer failure" in reason:
                reason = "http: server gave HTTP response to HTTPS client"
            elif "CERTIFICATE_VERIFY_FAILED" in reason:
                reason = "tls: failed to verify certificate: x509: certificate signed by " \
                         "unknown authority"
            raise PullError(f"Get \"{url}\": {reason}", network=True) from None
        except urllib3.exceptions.HTTPError as e:
            refused = isinstance(e, urllib3.exceptions.NewConnectionError) and \
                "refused" in str(e).lower()
            raise PullError(f'Get "{url}": {_network_error(e, ref)}', refused=refused,
                            network=True) from None

    def _authorize(self, ref: ImageRef, creds: Credential | None) -> dict[str, str]:
        """Ping the registry; the Authorization header its challenge asks for."""
        url = self._url(ref, "/v2/")
        try:
            answer = self._request(ref, url, {})
        except PullError as e:
            raise PullError(f"pinging container registry {ref.registry}: {e}",
                            refused=e.refused, network=e.network) from None
        if answer.status == 200:
            return {}
        if answer.status != 401:
            raise PullError(f"pinging container registry {ref.registry}: invalid status code "
                            f"from registry {answer.status} ({HTTPStatus(answer.status).phrase})")
        scheme, params = _challenge(answer.headers.get("WWW-Authenticate", ""))
        if scheme == "basic":
            return {"Authorization": creds.basic()} if creds else {}
        if scheme != "bearer" or "realm" not in params:
            return {}
        query = {"service": params.get("service", ""),
                 "scope": f"repository:{ref.repository}:pull"}
        token_url = params["realm"] + "?" + urllib.parse.urlencode(query)
        token = self._request(ref, token_url, {"Authorization": creds.basic()} if creds else {})
        if token.status != 200:
            raise PullError("unable to retrieve auth token: invalid username/password: "
                            + _registry_error(token.data, token.status))
        body = json.loads(token.data)
        return {"Authorization": f"Bearer {body.get('token') or body.get('access_token')}"}

    def _get_document(self, ref: ImageRef, path: str, headers: dict[str, str],
                      what: str) -> urllib3.BaseHTTPResponse:
        answer = self._request(ref, self._url(ref, path), headers)
        if answer.status != 200:
            raise PullError(f"reading {what} in {ref.name}: "
                            + _registry_error(answer.data, answer.status))
        if len(answer.data) > _MAX_DOCUMENT:
            raise PullError(f"reading {what} in {ref.name}: document too large")
        return answer

    # -- pulling ----------------------------------------------------------------------

    def pull(self, image: str, ref: ImageRef, creds: Credential | None) -> PulledImage:
        """Pull `image` (parsed as `ref`) with `creds` (None: anonymous)."""
        try:
            return self._pull(image, ref, creds)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            # A document that is not the JSON it should be (manifest, config, token).
            failure = PullError(f"invalid registry answer: {type(e).__name__}: {e}")
        except PullError as e:
            failure = e
        raise PullError(f"initializing source docker://{ref}: {failure}",
                        refused=failure.refused, network=failure.network,
                        at_source=failure.at_source, cause=str(failure))

    def _pull(self, image: str, ref: ImageRef, creds: Credential | None) -> PulledImage:
        try:
            auth = self._authorize(ref, creds)
            manifest, media_type, digest = self._manifest(ref, ref.reference, auth)
        except PullError as e:
            e.at_source = True
            raise
        top_digest, top_annotations = digest, manifest.get("annotations")
        if media_type in (OCI_INDEX, DOCKER_LIST):
            chosen = self._platform(manifest)
            manifest, media_type, digest = self._manifest(ref, chosen, auth)
        if media_type not in (OCI_MANIFEST, DOCKER_MANIFEST):
            raise PullError(f"unsupported manifest type {media_type}")
        config_digest = str(manifest.get("config", {}).get("digest", ""))
        config_answer = self._get_document(ref, f"/v2/{ref.repository}/blobs/{config_digest}",
                                           auth, f"config {config_digest}")
        if _sha256(config_answer.data) != config_digest:
            raise PullError(f"config {config_digest}: digest mismatch")
        config = json.loads(config_answer.data)
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        layers = [self._layer(ref, entry, diff_ids[i] if i < len(diff_ids) else None, auth)
                  for i, entry in enumerate(manifest.get("layers") or [])]
        # CRI-O reads checkpoint annotations from OCI manifests only.
        annotations = manifest.get("annotations") if media_type == OCI_MANIFEST else None
        return PulledImage(image, ref, top_digest, config_digest, media_type,
                           dict(annotations or {}), config, layers,
                           {str(k): str(v) for k, v in (top_annotations or {}).items()})

    def _manifest(self, ref: ImageRef, reference: str, auth: dict[str, str]
                  ) -> tuple[dict[str, Any], str, str]:
        headers = {**auth, "Accept": ", ".join(MANIFEST_TYPES)}
        answer = self._get_document(ref, f"/v2/{ref.repository}/manifests/{reference}",
                                    headers, f"manifest {reference}")
        digest = _sha256(answer.data)
        if reference.startswith("sha256:") and digest != reference:
            raise PullError(f"manifest {reference}: digest mismatch (got {digest})")
        document = json.loads(answer.data)
        media_type = str(document.get("mediaType") or
                         answer.headers.get("Content-Type", "").split(";")[0])
        return document, media_type, digest

    @staticmethod
    def _platform(index: dict[str, Any]) -> str:
        for entry in index.get("manifests") or []:
            platform = entry.get("platform") or {}
            if platform.get("os", "linux") == "linux" and \
                    platform.get("architecture", "amd64") == "amd64":
                return str(entry["digest"])
        raise PullError('choosing image instance: no image found in image index for '
                        'architecture amd64, variant "", OS linux')

    def _layer(self, ref: ImageRef, entry: dict[str, Any], diff_id: str | None,
               auth: dict[str, str]) -> Layer:
        digest, media_type = str(entry.get("digest", "")), str(entry.get("mediaType", ""))
        if media_type.endswith("+encrypted"):  # containers/image's and ocicrypt's words
            raise PullError(f"decrypting layer {digest}: missing private key needed for "
                            "decryption")
        codec = _LAYER_CODECS.get(media_type)
        if codec is None:
            raise PullError(f"layer {digest}: unsupported media type {media_type}")
        with self._lock:
            path = self._layers.get(digest)
        if path is None or not path.exists():
            path = self._fetch_layer(ref, digest, codec, diff_id, auth)
            with self._lock:
                self._layers[digest] = path
        return Layer(digest, media_type, int(entry.get("size", 0)), diff_id, path)

    def _fetch_layer(self, ref: ImageRef, digest: str, codec: str, diff_id: str | None,
                     auth: dict[str, str]) -> Path:
        answer = self._request(ref, self._url(ref, f"/v2/{ref.repository}/blobs/{digest}"),
                               auth, stream=True)
        try:
            if answer.status != 200:
                raise PullError(f"fetching blob {digest}: "
                                + _registry_error(answer.read(), answer.status))
            directory = self.root / "overlay-layers"
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = directory / f".{secrets.token_hex(8)}.partial"
            try:
                unpacked = self._unpack(answer, tmp, codec)
                if _sha256_hex(unpacked.blob) != digest:
                    raise PullError(f"fetching blob {digest}: digest mismatch")
                got = _sha256_hex(unpacked.diff)
                if diff_id is not None and got != diff_id:
                    raise PullError(f"layer {digest}: uncompressed digest {got} does not "
                                    f"match the config's diff_id {diff_id}")
                if not tarfile.is_tarfile(tmp):
                    raise PullError(f"layer {digest}: not a tar archive")
                final = directory / f"{got.removeprefix('sha256:')}.tar"
                os.replace(tmp, final)
                return final
            finally:
                tmp.unlink(missing_ok=True)
        finally:
            answer.release_conn()

    def _unpack(self, answer: urllib3.BaseHTTPResponse, tmp: Path,
                codec: str) -> _Decompressor:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            unpacked = _Decompressor(codec, out)
            try:
                for chunk in answer.stream(_CHUNK):
                    if self.stopped.is_set():
                        raise PullError("pull cancelled: the node is shutting down")
                    unpacked.write(chunk)
            except (zlib.error, zstandard.ZstdError) as e:
                raise PullError(f"layer: not {codec} data: {e}") from None
            except urllib3.exceptions.HTTPError as e:
                raise PullError(f"reading blob: {e}") from None
        return unpacked


def _sha256_hex(h: Any) -> str:
    return "sha256:" + str(h.hexdigest())
