"""A small JSON client of the real API server, for node agents (agent.py, nodeapi.py).

Client-certificate authentication over HTTPS (urllib3, a pool shared by the
agent's threads), JSON in and out, and watches read line by line. A refusal
raises e2e.nodes.api's `ApiFailure` (`Gone` for 404) carrying the Status
message; a connection that fails is an `ApiFailure` with code 0 (callers retry
on their next pass, as a kubelet's loops do).
"""

from __future__ import annotations

import contextlib
import json
import ssl
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import urllib3

from e2e.nodes.api import ApiFailure, Gone, Obj
from e2e.services.pki import CertPair

__all__ = ["KubeClient"]

_JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"


def _message(status: int, data: bytes) -> str:
    try:
        doc = json.loads(data)
    except ValueError:
        return f"HTTP {status}: {data.decode(errors='replace').strip()[:300]}"
    if isinstance(doc, dict) and doc.get("message"):
        return f"{doc.get('reason') or status}: {doc['message']}"
    return f"HTTP {status}"


class KubeClient:
    """Requests to `server` (https://HOST:PORT) as the holder of `client` (a
    certificate the API server's CA signed), verifying the server against `ca`."""

    def __init__(self, server: str, ca: CertPair, client: CertPair, *,
                 timeout: float = 30.0, connections: int = 8) -> None:
        context = ssl.create_default_context(cafile=str(ca.cert))
        context.load_cert_chain(str(client.cert), str(client.key))
        self.server = server.rstrip("/")
        self.timeout = timeout
        self._pool = urllib3.PoolManager(ssl_context=context, maxsize=connections,
                                         block=False, retries=False)

    def close(self) -> None:
        """Close the pool's connections."""
        self._pool.clear()

    def _url(self, path: str, query: Mapping[str, str] | None) -> str:
        return self.server + path + (f"?{urllib.parse.urlencode(query)}" if query else "")

    def request(self, method: str, path: str, body: Any = None, *,
                query: Mapping[str, str] | None = None,
                content_type: str = _JSON) -> Obj:
        """One request; the answer's JSON. ApiFailure on an HTTP error or none at all."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": _JSON, **({"Content-Type": content_type} if data else {})}
        try:
            resp = self._pool.request(method, self._url(path, query), body=data,
                                      headers=headers,
                                      timeout=urllib3.Timeout(connect=5.0, read=self.timeout))
        except urllib3.exceptions.HTTPError as e:
            raise ApiFailure(0, f"{method} {path}: {e}") from e
        if resp.status == 404:
            raise Gone(_message(resp.status, resp.data))
        if resp.status >= 400:
            raise ApiFailure(resp.status, _message(resp.status, resp.data))
        result: Obj = json.loads(resp.data) if resp.data else {}
        return result

    def watch(self, path: str, query: Mapping[str, str], *, seconds: int,
              opened: Callable[[Callable[[], None]], None] = lambda cancel: None
              ) -> Iterator[Obj]:
        """The events of a watch of `path` lasting at most `seconds` (timeoutSeconds):
        {"type": ..., "object": ...} each, until the server ends the stream.
        opened: given a function that ends the stream from another thread."""
        params = {**query, "watch": "true", "timeoutSeconds": str(seconds)}
        try:
            resp = self._pool.request("GET", self._url(path, params), preload_content=False,
                                      headers={"Accept": _JSON},
                                      timeout=urllib3.Timeout(connect=5.0, read=seconds + 15))
        except urllib3.exceptions.HTTPError as e:
            raise ApiFailure(0, f"watch {path}: {e}") from e

        def cancel() -> None:
            # A stream that has ended (closed, or back in the pool) has nothing to
            # shut down: urllib3 raises then, and stopping must not fail for it.
            with contextlib.suppress(ValueError, RuntimeError, OSError):
                resp.shutdown()

        opened(cancel)
        try:
            if resp.status >= 400:
                raise ApiFailure(resp.status, _message(resp.status, resp.read()))
            pending = b""
            for chunk in resp.stream(64 * 1024):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        try:
                            event = json.loads(line)
                        except ValueError as e:
                            # Seen once under heavy load (a line not UTF-8 at a 4 KiB
                            # boundary); a watcher lists again rather than dies.
                            raise ApiFailure(0, f"watch {path}: an event that is not JSON "
                                             f"({e}) near {line[4080:4110]!r}") from e
                        yield event
        except urllib3.exceptions.HTTPError as e:
            raise ApiFailure(0, f"watch {path}: {e}") from e
        finally:
            resp.close()  # a stream left part-read cannot go back to the pool
