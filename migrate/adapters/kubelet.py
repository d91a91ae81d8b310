"""Talk to a kubelet directly (port 10250) with a client certificate.

For clusters where the API server's node proxy is not allowed, or from the
node itself, as in the seed article's curl. TLS is verified against the
given CA; a client certificate the kubelet trusts authenticates us.
"""

from __future__ import annotations

import json
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import urllib3
from urllib3.exceptions import HTTPError, SSLError

from migrate.adapters.bounded import read_at_most
from migrate.errors import AuthError, ClusterError, NotFoundError, TransientClusterError
from migrate.retry import cluster_policy
from migrate.settings import RetrySettings


@dataclass(frozen=True)
class KubeletEndpoint:
    """Where the kubelet is and how we prove who we are."""

    url: str  # https://NODE:10250
    cert: Path
    key: Path
    ca: Path | None = None  # None: the system's trust store


# A runtime that cannot checkpoint at all answers 500 too; retrying cannot help.
_PERMANENT = re.compile(r"code = Unimplemented|not (available|enabled|supported|implemented)",
                        re.IGNORECASE)
RUNTIME_HINT = ("the container runtime could not checkpoint it: CRI-O needs CRIU support "
                "enabled; see the kubelet and runtime logs on the node")
# CRI-O's answer when its CRIU support is off (server/container_checkpoint.go, v1.36.3):
# enable_criu_support = false, no criu found at start, or (1.37, the patch releases
# since September 2026) container_level_enabled = "none".
_SUPPORT_OFF = "checkpoint/restore support not available"
SUPPORT_OFF_HINT = ("CRI-O's checkpoint support is off on that node: set [crio.runtime] "
                    "enable_criu_support = true (where CRI-O has a [crio.checkpoint_restore] "
                    'table: container_level_enabled = "checkpoint_only", or '
                    '"checkpoint_restore" to restore there too) in a file in '
                    "/etc/crio/crio.conf.d/, put criu on its PATH, and restart CRI-O")


# CRIU failed a dump or a restore: CRI-O relays runc's `criu failed: type NOTIFY errno
# 0\nlog file: .../userdata/dump.log` (or restore.log; the newline logrus-quoted, as the
# two characters \n), for a dump at the end of a line of a thousand characters (CRI-O
# v1.36.3 with runc, seen on the real nodes).
CRIU_FAILED = re.compile(r"criu failed: (?P<why>.*?)(?:\\n|\n)log file: (?P<log>\S+?\.log)")
CRIU_HINT = ("CRIU's log on the node says why (the lines with Error). Most often the "
             "container holds an established TCP connection: CRI-O asks CRIU for neither "
             "--tcp-established nor --tcp-close, so put the line `tcp-close` in "
             "/etc/criu/runc.conf on the nodes (runc hands that file to CRIU); the "
             "connections are then closed on restore and the workload must reconnect")
#: How much of a kubelet's error a message quotes.
_DETAIL = 300
#: The most of a kubelet's answer read: a checkpoint's is one path, an error a few lines
#: (CRI-O's longest seen, a CRIU failure, about a thousand characters).
MAX_ANSWER_BYTES = 1024 * 1024


def read_answer(resp: urllib3.BaseHTTPResponse, what: str) -> bytes:
    """The body of a kubelet's answer (``resp`` not preloaded), read up to
    MAX_ANSWER_BYTES: whatever answers at that address, it cannot make us hold more."""
    data = read_at_most(resp, MAX_ANSWER_BYTES)
    if data is None:
        raise ClusterError(f"{what}: answered {resp.status} with more than "
                           f"{MAX_ANSWER_BYTES} bytes",
                           hint="is a kubelet answering at that address?")
    return data


def runtime_failure(what: str, body: str) -> ClusterError:
    """A 5xx from the checkpoint API (``body``: the kubelet's answer): CRIU's own failure,
    which a retry of the same process state meets again; else transient unless the runtime
    lacks the feature."""
    criu = CRIU_FAILED.search(body)
    if criu:
        return ClusterError(f"{what}: CRIU could not dump it ({criu['why'].strip()}); "
                            f"its log on the node: {criu['log']}", hint=CRIU_HINT)
    lines = body.strip().splitlines()
    detail = lines[0][:_DETAIL] if lines else "no answer"
    if _SUPPORT_OFF in detail:
        return ClusterError(f"{what}: {detail}", hint=SUPPORT_OFF_HINT)
    cls = ClusterError if _PERMANENT.search(detail) else TransientClusterError
    return cls(f"{what}: {detail}", hint=RUNTIME_HINT)


def parse_checkpoint_response(body: bytes, what: str) -> str:
    """The archive path in the kubelet's ``{"items": ["<path>"]}`` answer."""
    try:
        path = json.loads(body)["items"][0]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise ClusterError(f"{what}: the kubelet answered without an archive path",
                           hint="the node's kubelet speaks an unexpected checkpoint API") from e
    if not isinstance(path, str) or not path.startswith("/"):
        raise ClusterError(f"{what}: the kubelet answered with {path!r}, not a path",
                           hint="the node's kubelet speaks an unexpected checkpoint API")
    return path


# The kubelet's denial after its authorizer (webhook: a SubjectAccessReview to the API
# server) said no: "Forbidden (user=U, verb=create, resource=nodes,
# subresource(s)=[checkpoint])" (pkg/kubelet/server/auth.go and server.go, v1.37.2).
_FORBIDDEN = re.compile(r"Forbidden \(user=(?P<user>[^,()]{1,200}), verb=(?P<verb>\w+), "
                        r"resource=(?P<resource>\w+), subresource\(s\)=\[(?P<sub>[\w,]*)\]\)")


def auth_hint(status: int, detail: str) -> str:
    """401: the certificate was not accepted; 403: its user was, and may not checkpoint."""
    if status == 401:
        return ("the kubelet does not accept this client certificate: --cert and --key must "
                "be signed by the CA its clientCAFile names")
    denied = _FORBIDDEN.search(detail)
    if denied is None:
        return "the kubelet accepts this client certificate, but its user may not checkpoint"
    # The kubelet's webhook authorizer caches a denial (authorization.webhook.
    # cacheUnauthorizedTTL, 30 s by default: pkg/kubelet/apis/config/v1beta1/defaults.go,
    # v1.37.2): a run at once after the grant is still refused.
    return (f"the kubelet knows the certificate's user {denied['user']}, who may not "
            f"{denied['verb']} {denied['resource']}/{denied['sub'].split(',')[0]}: grant it "
            "(a ClusterRole with that resource and verb, bound to the user); the kubelet "
            "remembers a denial for up to 30 s (its cacheUnauthorizedTTL)")


def _pool(ep: KubeletEndpoint, timeout: float) -> urllib3.PoolManager:
    ctx = ssl.create_default_context(cafile=str(ep.ca) if ep.ca else None)
    ctx.load_cert_chain(str(ep.cert), str(ep.key))
    return urllib3.PoolManager(ssl_context=ctx, retries=False,
                               timeout=urllib3.Timeout(connect=10, read=timeout))


def checkpoint_direct(ep: KubeletEndpoint, namespace: str, pod: str, container: str,
                      timeout: int | None, retry: RetrySettings) -> str:
    """POST /checkpoint/{namespace}/{pod}/{container}; the archive's path on the node."""
    what = f"checkpoint {namespace}/{pod}/{container} at {ep.url}"
    path = "/checkpoint/" + "/".join(quote(p, safe="") for p in (namespace, pod, container))
    url = ep.url.rstrip("/") + path + (f"?timeout={timeout}" if timeout else "")
    try:
        pool = _pool(ep, (timeout or 0) + 60)
    except (OSError, ssl.SSLError) as e:
        raise ClusterError(f"cannot use the kubelet client certificate: {e}",
                           hint="--cert and --key must be a PEM pair; --ca the kubelet's CA"
                           ) from e
    for attempt in cluster_policy(retry):
        with attempt:
            try:
                resp = pool.request("POST", url, preload_content=False)
            except SSLError as e:
                raise ClusterError(f"{what}: TLS failed ({type(e).__name__})",
                                   hint="check --ca, and that the kubelet trusts --cert") from e
            except HTTPError as e:
                raise TransientClusterError(f"{what}: cannot reach the kubelet "
                                            f"({type(e).__name__})",
                                            hint="check --kubelet-url") from e
            data = read_answer(resp, what)
            body = data.decode(errors="replace")
            text = body.strip().splitlines()
            detail = text[0][:_DETAIL] if text else f"HTTP {resp.status}"
            if resp.status == 200:
                return parse_checkpoint_response(data, what)
            if resp.status in (401, 403):
                raise AuthError(f"{what}: {detail}", hint=auth_hint(resp.status, detail))
            if resp.status == 404:
                raise NotFoundError(f"{what}: {detail}", hint=(
                    "the kubelet has no checkpoint endpoint (ContainerCheckpoint gate) or "
                    "does not run this container"))
            if resp.status >= 500:
                raise runtime_failure(what, body or f"HTTP {resp.status}")
            raise ClusterError(f"{what}: {detail}", hint="the kubelet refused the request")
    raise AssertionError("unreachable")  # pragma: no cover
