"""Read an HTTP answer's body up to a bound: whatever answers at an address (a registry,
a kubelet, or something else at that port) cannot make the tool hold more."""

from __future__ import annotations

import urllib3


def read_at_most(resp: urllib3.BaseHTTPResponse, limit: int) -> bytes | None:
    """The body of ``resp`` (not preloaded) when it holds at most ``limit`` bytes; None
    when it holds more. The connection goes back to its pool either way, closed first
    when the rest was left unread (it cannot be reused then)."""
    try:
        data = resp.read(limit + 1)
        if len(data) > limit:
            resp.close()
            return None
        return data
    finally:
        resp.release_conn()
