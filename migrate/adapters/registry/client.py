"""A small OCI distribution client that streams layers in one pass.

Authentication happens before any upload starts (a streamed body cannot be
sent twice), so a 401 in the middle of a blob means the credentials are
wrong, not that we forgot to log in. Every failure is translated here:
connection errors, timeouts, 5xx and 429 become `TransientRegistryError` for
the retry policy; 401/403 become `AuthError`; anything else `RegistryError`
carrying the registry's own error code and message. An answer of the wrong
shape, or a URL the registry gives that cannot be sent to, is a `RegistryError`
at once: retrying would meet it again. Credentials never reach a message or a
log line.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import re
import ssl
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import urllib3
from urllib3.exceptions import HTTPError, LocationValueError, SSLError
from urllib3.util import parse_url

from migrate.adapters.bounded import read_at_most
from migrate.adapters.registry.auth import Credentials, basic_header, lookup, parse_challenge
from migrate.adapters.registry.reference import Reference
from migrate.errors import AuthError, RegistryError, TransientRegistryError
from migrate.retry import registry_policy, retry_after
from migrate.settings import RegistrySettings

log = logging.getLogger(__name__)

CERTS_D = Path("/etc/containers/certs.d")
_MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                   "application/vnd.oci.image.index.v1+json",
                   "application/vnd.docker.distribution.manifest.v2+json",
                   "application/vnd.docker.distribution.manifest.list.v2+json")
_TLS_HINT = "give the registry's CA with --cert-dir DIR (DIR/*.crt), or --no-tls-verify"
_CERTS_HINT = ("a certificate directory holds CAs as *.crt (PEM) and a client pair as "
               "NAME.cert + NAME.key (containers-certs.d(5))")
_AUTH_HINT = "the registry's auth configuration is broken"
_NOT_OCI_HINT = "is this an OCI distribution registry?"
#: What a Bearer token may be: visible ASCII (RFC 6750's b64token is narrower still). It is
#: sent back in a header, so a newline in it would split the request.
_TOKEN = re.compile(r"[\x21-\x7e]+")
#: The most of an answer's body read into memory: what distribution accepts as a
#: manifest (4 MiB); its other answers (errors, tags, tokens, configs) are smaller. A
#: broken or hostile registry sending more, or without end, is refused, not buffered.
MAX_ANSWER_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Answer:
    """A registry's answer, its body read whole (at most MAX_ANSWER_BYTES)."""

    status: int
    reason: str
    headers: Mapping[str, str]  # urllib3's, which matches names whatever their case
    data: bytes


def _ssl_context(settings: RegistrySettings, host: str) -> ssl.SSLContext:
    cert_dir = settings.cert_dir or (CERTS_D / host)
    files: tuple[tuple[str, int], ...] = ()
    if cert_dir.is_dir():
        # The containers-certs.d(5) layout: CAs as *.crt, a client pair as *.cert + *.key.
        stamps = []
        for pattern in ("*.crt", "*.cert", "*.key"):
            for f in sorted(cert_dir.glob(pattern)):
                with _loading(f, "a certificate file"):  # e.g. a dangling link
                    stamps.append((str(f), f.stat().st_mtime_ns))
        files = tuple(stamps)
    return _cached_context(settings.tls_verify, files)


@functools.lru_cache(maxsize=32)
def _cached_context(tls_verify: bool, files: tuple[tuple[str, int], ...]) -> ssl.SSLContext:
    """One context per trust setting and set of certificate files (with their mtimes).

    Loading the system's CAs costs tens of milliseconds of CPU; a drain makes two
    clients per pod, in threads that share one interpreter, so each distinct
    context is built once per process. Contexts are safe to share between
    connections and threads once configured, and nothing changes them afterwards.
    """
    ctx = ssl.create_default_context()
    if not tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    for name, _ in files:
        path = Path(name)
        if path.suffix == ".crt":
            with _loading(path, "a CA certificate"):
                ctx.load_verify_locations(cafile=name)
        elif path.suffix == ".cert":
            key = path.with_suffix(".key")
            if not key.is_file():
                raise RegistryError(f"{path}: a client certificate without its key {key}",
                                    hint=_CERTS_HINT)
            with _loading(path, "a client certificate and key"):
                ctx.load_cert_chain(name, str(key))
    return ctx


@contextlib.contextmanager
def _loading(path: Path, what: str) -> Iterator[None]:
    """A file ssl cannot load is the user's to fix: named, with the layout, not a bug."""
    try:
        yield
    except ssl.SSLError as e:
        # OpenSSL names most faults (KEY_VALUES_MISMATCH); a file that is not PEM at all
        # gets only "PEM lib" with a line of _ssl.c.
        raise RegistryError(f"{path}: cannot load {what} ({e.reason or 'not PEM'})",
                            hint=_CERTS_HINT) from e
    except OSError as e:
        raise RegistryError(f"{path}: cannot load {what} ({e.strerror or type(e).__name__})",
                            hint=_CERTS_HINT) from e


def _registry_message(resp: Answer) -> str:
    """The registry's own explanation (``{"errors": [{code, message}]}``), if any."""
    try:
        doc = json.loads(resp.data or b"{}")
    except ValueError:
        return ""
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list):  # a body of another shape explains nothing
        return ""
    return "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
                     for e in errors if isinstance(e, dict))


def _http_url(url: str) -> bool:
    """Whether urllib3 can send to ``url``: absolute, http(s), with a host and a valid port.

    Checked before use because urllib3 raises for such URLs only when asked to send
    (LocationValueError, a ValueError our retry policy would take for a connection
    failure), and warns on stderr about one without a scheme.
    """
    try:
        parsed = parse_url(url)
    except LocationValueError:
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.host)


def _shown(url: str) -> str:
    """A URL for a message: without its query, which may carry a signed upload state."""
    return repr(url.split("?", 1)[0].split("#", 1)[0][:200])


class RegistryClient:
    """Talks to one repository of one registry."""

    def __init__(self, ref: Reference, settings: RegistrySettings,
                 actions: str = "pull,push") -> None:
        self.ref = ref
        self.actions = actions  # what a Bearer token is asked for (prune: pull,delete)
        self.settings = settings
        self._creds: Credentials | None = lookup(ref.registry, ref.repository, settings)
        self._pool = urllib3.PoolManager(
            ssl_context=_ssl_context(settings, ref.api_host),
            timeout=urllib3.Timeout(connect=settings.timeout, read=settings.timeout),
            retries=False,  # retries are ours: named policies, transient errors only
        )
        self._scheme = "https"
        self._auth: str | None = None
        self.policy = registry_policy(settings.retry)
        self.requests = 0

    @property
    def username(self) -> str | None:
        """Who the client authenticates as (None: anonymous)."""
        return self._creds[0] if self._creds else None

    @property
    def credentials(self) -> Credentials | None:
        """What it authenticates with (the authfile may name other ones for another
        repository of the same registry)."""
        return self._creds

    @property
    def scoped(self) -> bool:
        """Whether its login holds for this repository only: a Bearer token is scoped to
        one; anonymous access and Basic credentials hold for the whole registry."""
        return self._auth is not None and self._auth.startswith("Bearer ")

    # -- plumbing ---------------------------------------------------------------

    def url(self, path: str) -> str:
        """Absolute URL for an API path or a (possibly relative) Location."""
        base = f"{self._scheme}://{self.ref.api_host}"
        return urljoin(base + "/", path) if not urlsplit(path).scheme else path

    def _send(self, method: str, url: str, body: Any, headers: dict[str, str],
              chunked: bool) -> Answer:
        if self._auth:
            headers = {**headers, "Authorization": self._auth}
        return self._open(method, url, self.ref.registry,
                          "check the registry address and that it is running",
                          body=body, headers=headers, chunked=chunked)

    def _open(self, method: str, url: str, peer: str, hint: str | None,
              **kw: Any) -> Answer:
        """One request to ``peer`` (the registry or its token service), its failures
        translated: only those a second try may not meet are transient."""
        self.requests += 1
        try:
            return self._read(self._pool.request(method, url, redirect=False,
                                                 preload_content=False, **kw))
        except SSLError as e:
            raise RegistryError(f"TLS with {peer} failed: {e.__class__.__name__}",
                                hint=_TLS_HINT) from e
        except LocationValueError as e:
            # A URL urllib3 cannot send to (the ones the registry gives are checked
            # first): it would be the same on every try.
            raise RegistryError(f"{peer}: cannot send to {_shown(url)}: {e.__class__.__name__}",
                                hint="the registry's configuration is broken") from e
        except HTTPError as e:
            raise TransientRegistryError(f"cannot reach {peer}: {e.__class__.__name__}",
                                         hint=hint) from e

    def _read(self, resp: urllib3.BaseHTTPResponse) -> Answer:
        """The answer with its body, read up to MAX_ANSWER_BYTES."""
        data = read_at_most(resp, MAX_ANSWER_BYTES)
        if data is None:
            raise RegistryError(f"{self.ref.registry}: answered {resp.status} with more "
                                f"than {MAX_ANSWER_BYTES} bytes", hint=_NOT_OCI_HINT)
        return Answer(resp.status, resp.reason or "", resp.headers, data)

    def request(self, method: str, path: str, *, expected: set[int], body: Any = None,
                headers: dict[str, str] | None = None, chunked: bool = False,
                what: str = "request") -> Answer:
        """Send once; map the status to the error tree. Retrying is the caller's policy."""
        resp = self._send(method, self.url(path), body, dict(headers or {}), chunked)
        replayable = body is None or isinstance(body, bytes)
        if resp.status == 401 and replayable:  # e.g. a token expired during a long upload
            self._authenticate(resp)
            resp = self._send(method, self.url(path), body, dict(headers or {}), chunked)
        if resp.status in expected:
            return resp
        self._raise(resp, what)
        raise AssertionError("unreachable")  # pragma: no cover

    def _raise(self, resp: Answer, what: str) -> None:
        detail = _registry_message(resp) or resp.reason or ""
        msg = f"{self.ref.registry}: {what} failed: HTTP {resp.status}" + (
            f" ({detail})" if detail else "")
        if resp.status in (401, 403):
            who = f"as {self._creds[0]!r}" if self._creds else "without credentials"
            raise AuthError(msg + f" {who}", hint=(
                "check the user and password (--creds USER:PASS or --authfile FILE)"
                if resp.status == 401 else
                f"the account may not push to {self.ref.repository}"))
        if resp.status == 429 or resp.status >= 500:
            raise TransientRegistryError(
                msg, hint="the registry is overloaded or failing; try again later",
                retry_after=retry_after(resp.headers.get("Retry-After")))
        raise RegistryError(msg, hint="the registry refused the request")

    # -- authentication -----------------------------------------------------------

    def _authenticate(self, resp: Answer) -> None:
        header = resp.headers.get("WWW-Authenticate", "")
        challenge = parse_challenge(header)
        if challenge.scheme == "basic" and self._creds:
            self._auth = basic_header(self._creds)
        elif challenge.scheme == "bearer":
            self._auth = "Bearer " + self._token(challenge.params)
        else:
            self._raise(resp, "authentication")

    def _token(self, params: dict[str, str]) -> str:
        realm = params.get("realm")
        if not realm:
            raise RegistryError(f"{self.ref.registry}: Bearer challenge without a realm",
                                hint=_AUTH_HINT)
        # The token auth spec makes the realm the token service's URL; docker and
        # containers/image use it as it is, so a relative one is refused, not resolved.
        if not _http_url(realm):
            raise RegistryError(f"{self.ref.registry}: the Bearer challenge's realm "
                                f"{_shown(realm)} is not a usable absolute http(s) URL",
                                hint=_AUTH_HINT)
        query = {"scope": f"repository:{self.ref.repository}:{self.actions}"}
        if params.get("service"):
            query["service"] = params["service"]
        headers = {"Authorization": basic_header(self._creds)} if self._creds else {}
        url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        resp = self._open("GET", url, f"the token service of {self.ref.registry}", None,
                          headers=headers)
        if resp.status != 200:
            self._raise(resp, "token request")
        try:
            data = json.loads(resp.data)
        except ValueError as e:
            raise RegistryError(f"{self.ref.registry}: the token service answered without a "
                                "token", hint=_AUTH_HINT) from e
        token = (data.get("token") or data.get("access_token")) if isinstance(data, dict) else None
        if not token:
            raise RegistryError(f"{self.ref.registry}: the token service answered without a "
                                "token", hint=_AUTH_HINT)
        # Never quoted: whatever it holds, it is a credential.
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            raise RegistryError(f"{self.ref.registry}: the token service answered with a token "
                                "that is not a string of visible ASCII", hint=_AUTH_HINT)
        return token

    def login(self) -> None:
        """Pick http(s) and authenticate before anything is uploaded."""
        def ping() -> Answer:
            return self._send("GET", self.url("/v2/"), None, {}, False)

        try:
            resp = ping()
        except RegistryError:
            if self.settings.tls_verify or self._scheme == "http":
                raise
            # --no-tls-verify also allows plain HTTP, as buildah's --tls-verify=false does.
            self._scheme = "http"
            resp = ping()
        if resp.status == 401:
            self._authenticate(resp)
            resp = ping()
        if resp.status != 200:
            self._raise(resp, "login")

    # -- the API ----------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        """Whether the repository already has this blob."""
        resp = self.request("HEAD", f"/v2/{self.ref.repository}/blobs/{digest}",
                            expected={200, 404}, what="blob check")
        return resp.status == 200

    def start_upload(self) -> str:
        """Open an upload session; returns its location."""
        resp = self.request("POST", f"/v2/{self.ref.repository}/blobs/uploads/",
                            expected={202}, what="upload start")
        return self._location(resp, "upload start")

    def cancel_upload(self, location: str) -> None:
        """Best effort: drop a session so no partial blob lingers."""
        try:
            self._send("DELETE", location, None, {}, False)
        except RegistryError as e:
            log.debug("cancelling upload failed: %s", e)

    def stream_upload(self, location: str, chunks: Iterable[bytes | memoryview]) -> str:
        """PATCH the whole stream in one request; returns the session's next location."""
        resp = self.request("PATCH", location, body=chunks, chunked=True, expected={202},
                            headers={"Content-Type": "application/octet-stream"},
                            what="layer upload")
        return self._location(resp, "layer upload")

    def _location(self, resp: Answer, what: str) -> str:
        """Where an upload goes on (an absolute URL); the registry's fault, so not
        retried, when it names none or one that cannot be sent to."""
        where = resp.headers.get("Location")
        if not where:
            raise RegistryError(f"{self.ref.registry}: {what} answered {resp.status} without "
                                "a Location", hint=_NOT_OCI_HINT)
        try:
            url = self.url(where)
        except ValueError:  # urlsplit's, on a malformed IPv6 host
            url = where
        if not _http_url(url):
            raise RegistryError(f"{self.ref.registry}: {what}: the Location {_shown(where)} "
                                "is not a usable http(s) URL", hint=_NOT_OCI_HINT)
        return url

    def finish_upload(self, location: str, digest: str, data: bytes = b"") -> None:
        """Close a session, naming the digest the registry must verify."""
        sep = "&" if "?" in location else "?"
        self.request("PUT", f"{location}{sep}{urlencode({'digest': digest})}", body=data,
                     headers={"Content-Type": "application/octet-stream"}, expected={201},
                     what="upload completion")

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> str:
        """Upload a manifest or index under a tag or digest; returns the digest the
        registry stored it under ("" when it does not say)."""
        resp = self.request("PUT", f"/v2/{self.ref.repository}/manifests/{reference}",
                            body=data, headers={"Content-Type": media_type}, expected={201},
                            what="manifest upload")
        return resp.headers.get("Docker-Content-Digest", "")

    def get_manifest(self, reference: str, media_type: str) -> bytes:
        """Fetch a manifest by tag or digest."""
        resp = self.request("GET", f"/v2/{self.ref.repository}/manifests/{reference}",
                            headers={"Accept": media_type}, expected={200},
                            what="manifest fetch")
        return bytes(resp.data)

    def has_manifest(self, digest: str) -> bool:
        """Whether the repository has this manifest (logging in first)."""
        self.login()
        resp = self.request("HEAD", f"/v2/{self.ref.repository}/manifests/{digest}",
                            headers={"Accept": ", ".join(_MANIFEST_TYPES)},
                            expected={200, 404}, what="manifest check")
        return resp.status == 200

    def delete_manifest(self, digest: str) -> bool:
        """Delete a manifest by digest (logging in first); False when the registry does not
        allow deletes (405). One that is gone already counts as deleted."""
        self.login()
        resp = self.request("DELETE", f"/v2/{self.ref.repository}/manifests/{digest}",
                            expected={202, 404, 405}, what="manifest delete")
        return resp.status != 405

    # -- listing and reading, for prune ----------------------------------------------

    def _pages(self, path: str, key: str, what: str) -> list[str]:
        """Every item of a paginated list (``Link: <...>; rel="next"``), 404 as empty."""
        out: list[str] = []
        query: dict[str, str] = {"n": "1000"}
        for _ in range(10_000):  # a registry that links in a circle must not hang us
            resp = self.request("GET", f"{path}?{urlencode(query)}", expected={200, 404},
                                what=what)
            if resp.status == 404:
                return out
            try:
                items = json.loads(resp.data).get(key) or []
            except (ValueError, AttributeError) as e:
                raise RegistryError(f"{self.ref.registry}: {what}: not JSON",
                                    hint=_NOT_OCI_HINT) from e
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise RegistryError(f"{self.ref.registry}: {what}: '{key}' is not a list of "
                                    "names", hint=_NOT_OCI_HINT)
            out.extend(items)
            link = resp.headers.get("Link", "")
            if 'rel="next"' not in link:
                return out
            following = parse_qs(urlsplit(link.split(";")[0].strip(" <>")).query)
            query = {k: v[-1] for k, v in following.items()}
        return out

    def list_tags(self) -> list[str]:
        """The repository's tags (none when it does not exist)."""
        return self._pages(f"/v2/{self.ref.repository}/tags/list", "tags", "tag list")

    def catalog(self) -> list[str]:
        """The registry's repositories (``/v2/_catalog``; many registries refuse it)."""
        return self._pages("/v2/_catalog", "repositories", "catalog")

    def manifest(self, reference: str, accept: Iterable[str]) -> tuple[bytes, str, str]:
        """A manifest or index by tag or digest: (body, media type, its digest)."""
        resp = self.request("GET", f"/v2/{self.ref.repository}/manifests/{reference}",
                            headers={"Accept": ", ".join(accept)}, expected={200},
                            what="manifest fetch")
        body = bytes(resp.data)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        return body, resp.headers.get("Content-Type", ""), digest

    def get_blob(self, digest: str, limit: int) -> bytes:
        """A small blob (an image config), at most ``limit`` bytes, checked against its digest."""
        resp = self.request("GET", f"/v2/{self.ref.repository}/blobs/{digest}", expected={200},
                            what="blob fetch")
        body = bytes(resp.data)
        if len(body) > limit or "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            raise RegistryError(f"{self.ref.registry}: blob {digest} is not what was asked "
                                f"for (or larger than {limit} bytes)",
                                hint="the registry's storage may be damaged")
        return body
