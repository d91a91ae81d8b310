"""A node's own address: a network namespace joined to the host by a veth pair.

The API server refuses to proxy to a node whose address is not global unicast,
loopback included, whatever the port (e2e/cluster/__init__.py has the source).
So each node agent's servers run in a network namespace of their own, reached
from the host (where the API server runs) over one veth pair:

    host:  mcpXXXXXXXXh  198.18.A.B+1/30   <-- veth -->   eth0  198.18.A.B+2/30  :node

Addresses come from 198.18.0.0/16, half of the benchmarking block (RFC 2544)
that this project uses for its own test hosts; a /30 is picked at random among
those no interface of the host holds, so parallel test sessions do not collide.
Nothing is routed beyond the pair.

The namespace is not a named one (`ip netns add`): it belongs to a holder
process (`unshare --net`, killed with its parent: e2e/cluster/procs.py), and the
kernel removes it, and with it both ends of the veth pair, when the holder and
everything started inside have exited. A launcher killed with SIGKILL therefore
leaves no namespace, link or address behind. Needs root (CAP_NET_ADMIN).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from e2e.cluster import procs
from e2e.services.addresses import TEST_HOSTS

__all__ = ["NODE_HOSTS", "NodeHost", "missing", "node_host"]

#: Where node hosts' /30 links are taken from.
NODE_HOSTS = TEST_HOSTS
_TOOLS = ("ip", "unshare", "nsenter", "sleep")


def missing() -> str | None:
    """None when node hosts can be made here, else what is missing."""
    if os.geteuid() != 0:
        return "node hosts (network namespaces, veth pairs) need root"
    absent = [t for t in _TOOLS if shutil.which(t) is None]
    return f"node hosts need {', '.join(absent)} on PATH" if absent else None


def _ip(*args: str, netns_of: int | None = None) -> str:
    argv = ["ip", *args]
    if netns_of is not None:
        argv = ["nsenter", f"--net=/proc/{netns_of}/ns/net", "--", *argv]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")
    return r.stdout


def _taken() -> set[ipaddress.IPv4Address]:
    out = _ip("-4", "-o", "addr", "show")
    return {ipaddress.IPv4Interface(line.split()[3]).ip for line in out.splitlines()}


def _pick_link() -> ipaddress.IPv4Network:
    taken = _taken()
    links = NODE_HOSTS.num_addresses // 4
    for _ in range(100):
        net = ipaddress.IPv4Network((int(NODE_HOSTS.network_address) + 4 * random.randrange(links),
                                     30))
        if not any(a in net for a in taken):
            return net
    raise RuntimeError(f"no free /30 in {NODE_HOSTS}")


@dataclass
class NodeHost:
    """A running node host; valid inside `node_host`'s with-block."""

    name: str
    address: str
    """The node's address, inside the namespace (a Node's InternalIP)."""
    host_address: str
    """The host's end of the link."""
    host_link: str
    """The host-side interface name."""
    holder: procs.Proc
    log_dir: Path
    env: Mapping[str, str]
    started: list[procs.Proc] = field(default_factory=list)

    @property
    def netns(self) -> Path:
        """The namespace, as a path `nsenter --net=` and setns accept."""
        return Path(f"/proc/{self.holder.pid}/ns/net")

    def spawn(self, name: str, argv: Sequence[str | os.PathLike[str]]) -> procs.Proc:
        """Start `argv` inside the namespace; it is stopped when the host closes."""
        p = procs.spawn(name, ["nsenter", f"--net={self.netns}", "--", *argv],
                        self.log_dir / f"{self.name}-{name}.log", env=self.env)
        self.started.append(p)
        return p

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run a short command inside the namespace (e.g. `ip addr`)."""
        return subprocess.run(["nsenter", f"--net={self.netns}", "--", *argv],
                              capture_output=True, text=True, timeout=30, check=False)


def _wait_unshared(holder: procs.Proc) -> None:
    mine = os.readlink("/proc/self/ns/net")

    def unshared() -> bool:
        try:
            return os.readlink(f"/proc/{holder.pid}/ns/net") != mine
        except FileNotFoundError:
            return False

    procs.wait_until(unshared, timeout=10, what="the node host's namespace", watch=[holder],
                     interval=0.01)


def _link_gone(name: str) -> bool:
    r = subprocess.run(["ip", "link", "show", "dev", name], capture_output=True, timeout=30,
                       check=False)
    return r.returncode != 0


@contextlib.contextmanager
def node_host(name: str, log_dir: Path, *,
              env: Mapping[str, str] | None = None) -> Iterator[NodeHost]:
    """Make a namespace with a veth link to the host, yield it, tear it all down.

    log_dir: where the holder's and spawned processes' logs go (files 0600).
    env: the environment of processes spawned inside (default: PATH only).
    """
    reason = missing()
    if reason is not None:
        raise RuntimeError(reason)
    env = dict(env) if env is not None else {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    holder = procs.spawn(f"{name}-netns", ["unshare", "--net", "--", "sleep", "infinity"],
                         log_dir / f"{name}-netns.log", env=env)
    link = f"mcp{secrets.token_hex(4)}h"
    host: NodeHost | None = None
    try:
        _wait_unshared(holder)
        net = _pick_link()
        host_ip, node_ip = str(net.network_address + 1), str(net.network_address + 2)
        _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns",
            str(holder.pid))
        _ip("addr", "add", f"{host_ip}/30", "dev", link)
        _ip("link", "set", link, "up")
        _ip("addr", "add", f"{node_ip}/30", "dev", "eth0", netns_of=holder.pid)
        _ip("link", "set", "eth0", "up", netns_of=holder.pid)
        _ip("link", "set", "lo", "up", netns_of=holder.pid)
        host = NodeHost(name=name, address=node_ip, host_address=host_ip, host_link=link,
                        holder=holder, log_dir=log_dir, env=env)
        yield host
    finally:
        started = host.started if host is not None else []
        procs.stop([*reversed(started), holder], grace=10)
        # The kernel tears the namespace down asynchronously once its last process
        # is gone; wait, so a caller may check that nothing is left.
        procs.wait_until(lambda: _link_gone(link), timeout=30,
                         what=f"the removal of {link}")
