"""The addresses of the test world's own hosts, the one place they are named.

198.18.0.0/16 is half of the benchmarking block (RFC 2544): node hosts take their
/30 links from it (e2e/cluster/nodehost.py), servers that pods must reach listen
on one of its addresses this host holds, and nothing in the tests connects to an
address outside it or loopback.
"""

from __future__ import annotations

import ipaddress

__all__ = ["TEST_HOSTS"]

TEST_HOSTS = ipaddress.ip_network("198.18.0.0/16")
