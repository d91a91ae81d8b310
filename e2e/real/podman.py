"""A private Podman for tests: its own configuration, storage, run root and network.

    with PodmanWorld(criu_bin_dir) as world:
        world.build_image(rootfs_dir, "localhost/x:1")
        world.podman("run", "-d", "--network", world.network, ...)

Nothing of the host's Podman state is read or written: CONTAINERS_CONF and
CONTAINERS_STORAGE_CONF point at files made here (for podman and buildah),
and the events log, tmp dir and network definitions live under the world's
directory, a short one of its own in /tmp (removed by close()): with the world
51 characters deep (pytest-xdist's basetemp) Podman's exit-time cleanup of a
`--rm` container stopped short of removing it, which it did at 41.

What this machine needs (found when setting this up, Debian 12, kernel 6.x,
hybrid cgroup v1 layout, root without CAP_SYS_RESOURCE):

- runtime runc: Debian 12's crun 1.8 has no CRIU support and refuses the
  hybrid cgroup layout; runc runs the `criu` first on PATH, so the CRIU
  built by scripts/setup-real is put first on the PATH podman gets;
- default_ulimits small enough never to raise a limit: Podman's defaults
  (nofile and nproc raised to the maximum) fail without CAP_SYS_RESOURCE;
- cgroupfs (no systemd here), file events (no journald);
- storage driver overlay on the ext4 root (vfs works too, but copies layers);
- an internal bridge network per world (its own bridge name and a free /24):
  Podman writes the IP into the archive's network.status, there is no NAT and
  no firewall rule, and netavark removes the bridge with the last container.
  A loopback TCP socket inside the container works on any network.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["PodmanError", "PodmanWorld"]

_TIMEOUT = 300


class PodmanError(RuntimeError):
    """A podman or buildah command failed; the message carries its stderr."""


def _free_subnet() -> str:
    """A 10.89.X.0/24 no route of this machine uses (another world may hold one)."""
    used = set()
    with open("/proc/net/route") as f:
        for line in f.readlines()[1:]:
            dest = int(line.split()[1], 16)  # little-endian IPv4
            used.add(((dest & 0xFF), (dest >> 8) & 0xFF, (dest >> 16) & 0xFF))
    for _ in range(64):
        x = 100 + secrets.randbelow(150)
        if (10, 89, x) not in used:
            return f"10.89.{x}.0/24"
    raise PodmanError("no free 10.89.X.0/24 subnet for the test network")


class PodmanWorld:
    """A Podman instance private to one test session; close() removes what it made."""

    def __init__(self, criu_bin_dir: Path) -> None:
        self.root = root = Path(tempfile.mkdtemp(prefix="pw-", dir="/tmp"))
        for sub in ("storage", "run", "tmp", "networks"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        tag = secrets.token_hex(3)
        self.network = f"migrate-{tag}"
        self.subnet = _free_subnet()
        self._write_configs()
        self._write_network(bridge=f"mgr{tag}")
        self.env = dict(os.environ)
        self.env.update(
            CONTAINERS_CONF=str(root / "containers.conf"),
            CONTAINERS_STORAGE_CONF=str(root / "storage.conf"),
            PATH=f"{criu_bin_dir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
        )

    def _write_configs(self) -> None:
        # Small enough never to raise a limit (raising needs CAP_SYS_RESOURCE);
        # runc refused this process's own hard NPROC limit, so not that either.
        nofile = min(1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        nproc = min(4096, resource.getrlimit(resource.RLIMIT_NPROC)[1])
        r = self.root
        (r / "containers.conf").write_text(
            "[containers]\n"
            f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{r / "events.log"}"\n'
            f'tmp_dir = "{r / "tmp"}"\n'
            "[network]\n"
            f'network_config_dir = "{r / "networks"}"\n'
        )
        (r / "storage.conf").write_text(
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{r / "storage"}"\n'
            f'runroot = "{r / "run"}"\n'
        )

    def _write_network(self, bridge: str) -> None:
        net, _ = self.subnet.rsplit(".", 1)
        definition = {
            "name": self.network,
            "id": secrets.token_hex(32),
            "driver": "bridge",
            "network_interface": bridge,
            "created": "2026-01-01T00:00:00Z",
            "subnets": [{"subnet": self.subnet, "gateway": f"{net}.1"}],
            "ipv6_enabled": False,
            "internal": True,
            "dns_enabled": False,
            "ipam_options": {"driver": "host-local"},
        }
        (self.root / "networks" / f"{self.network}.json").write_text(json.dumps(definition))

    def _run(self, tool: str, args: tuple[str, ...],
             check: bool) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([tool, *args], capture_output=True, text=True, env=self.env,
                              timeout=_TIMEOUT, check=False)
        if check and proc.returncode != 0:
            raise PodmanError(f"{tool} {' '.join(args)} failed ({proc.returncode}): "
                              f"{proc.stderr.strip()[-2000:]}")
        return proc

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run podman with this world's configuration."""
        return self._run("podman", args, check)

    def buildah(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run buildah on this world's storage."""
        return self._run("buildah", args, check)

    def build_image(self, rootfs: Path, tag: str, **config: Any) -> str:
        """Commit ``rootfs`` (a directory) as a one-layer image from scratch; returns its ID."""
        ctr = self.buildah("from", "scratch").stdout.strip()
        try:
            self.buildah("add", ctr, str(rootfs), "/")
            for key, value in config.items():
                self.buildah("config", f"--{key}", value, ctr)
            return self.buildah("commit", "-q", ctr, tag).stdout.strip()
        finally:
            self.buildah("rm", ctr, check=False)

    def host_pid(self, container: str) -> int:
        """The host PID of the container's first process."""
        return int(self.podman("inspect", "--format", "{{.State.Pid}}", container).stdout)

    def close(self) -> None:
        """Remove every container and image of this world, and its mounts."""
        self.podman("rm", "--all", "--force", "--time", "0", check=False)
        self.podman("rmi", "--all", "--force", check=False)
        # containers/storage unmounts on exit; anything left would pin the directory.
        prefix = str(self.root) + "/"
        with open("/proc/self/mounts") as f:
            mounts = [line.split()[1] for line in f if line.split()[1].startswith(prefix)]
        for mount in reversed(mounts):
            with contextlib.suppress(OSError):
                subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PodmanWorld:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
