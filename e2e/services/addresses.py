"""The addresses of the test world's own hosts, the one place they are named, and
free ports on them.

198.18.0.0/16 is half of the benchmarking block (RFC 2544): node hosts take their
/30 links from it (e2e/cluster/nodehost.py), servers that pods must reach listen
on one of its addresses this host holds, and nothing in the tests connects to an
address outside it or loopback.
"""

from __future__ import annotations

import ipaddress
import socket

__all__ = ["LOOPBACK", "TEST_HOSTS", "free_port"]

LOOPBACK = "127.0.0.1"
TEST_HOSTS = ipaddress.ip_network("198.18.0.0/16")


def free_port(address: str = LOOPBACK) -> int:
    """A TCP port on `address` that was free a moment ago (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])
