"""The `counters` workload as a real container: busybox-static, a secret in memory, a
counter that prints on, and (optionally) memory it holds, pushed as a one-layer image.

    ref = push_counter_image(registry.host, "demo/counter", "1")
    pod = counter_pod("counters", ref, secret=secret, node="node-a")

PID 1 is a busybox shell running /counter.sh: it builds `token=<SECRET>` in
its heap from the SECRET variable (which it then unsets, so the secret is
held by the shell's own variable), writes /home/counter/test-file (a file of
the root-fs diff), and prints `counter: N` every INTERVAL seconds (default 1)
with N going up from 1: its log is how the count is read, and a restored
process goes on from where it was. With BALLAST_MIB=M a busybox awk child
builds an M MiB string (a power of two: doubling "x") and waits holding it,
after printing `ballast: M MiB` (touched, resident memory for CRIU to dump).
With TCP_PORT=P two busybox nc hold an established TCP connection to each other
on 127.0.0.1:P (`tcp: connected on P` once they do), as most services hold one.
With DATA_LOG=PATH it also appends each line to PATH (on a volume, say), which it
holds open, as a service holds its log or its database.

The image is built here, from scratch, with nothing pulled: one uncompressed
layer (busybox-static and its applet links, the script), an OCI config and
manifest, pushed over plain HTTP to a loopback registry (the real nodes pull
from it over plain HTTP, realnode.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import urllib3

__all__ = ["COUNTER_SH", "LINE_PREFIX", "counter_pod", "counter_rootfs", "counts",
           "push_counter_image", "push_rootfs"]

COUNTER_SH = """#!/bin/sh
# The counters pod's process (e2e/real/counter.py says what each line leaves).
token="token=$SECRET"
unset SECRET
mkdir -p /home/counter
echo "counter state file of $(hostname)" > /home/counter/test-file
if [ -n "$BALLAST_MIB" ]; then
  awk -v mib="$BALLAST_MIB" 'BEGIN { s = "x"; while (length(s) < mib * 1048576) s = s s;
    printf "ballast: %d MiB\\n", length(s) / 1048576; fflush(); system("exec sleep 2147483647") }' &
fi
if [ -n "$TCP_PORT" ]; then
  mkfifo /tmp/tcp.fifo
  exec 5<>/tmp/tcp.fifo
  nc -l -p "$TCP_PORT" </tmp/tcp.fifo >/dev/null &
  until netstat -tln | grep -q ":$TCP_PORT "; do usleep 10000; done
  nc 127.0.0.1 "$TCP_PORT" </tmp/tcp.fifo >/dev/null &
  until netstat -tn | grep -q ESTABLISHED; do usleep 10000; done
  echo "tcp: connected on $TCP_PORT"
fi
if [ -n "$DATA_LOG" ]; then
  exec 6>>"$DATA_LOG"
fi
n=0
while :; do
  n=$((n + 1))
  echo "counter: $n"
  if [ -n "$DATA_LOG" ]; then echo "counter: $n" >&6; fi
  sleep "${INTERVAL:-1}"
done
"""
LINE_PREFIX = "counter: "
_APPLETS = ("sh", "echo", "mkdir", "hostname", "sleep", "awk", "cat", "ls", "mkfifo", "nc",
            "netstat", "grep", "usleep")
_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def counter_rootfs(dest: Path) -> Path:
    """The image's root: busybox-static, its applet links and /counter.sh."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise RuntimeError("busybox-static is not installed (apt-get install busybox-static)")
    for d in ("bin", "etc", "home", "tmp", "proc", "sys", "dev", "run"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy(busybox, dest / "bin/busybox")
    for applet in _APPLETS:
        (dest / "bin" / applet).symlink_to("busybox")
    (dest / "counter.sh").write_text(COUNTER_SH)
    (dest / "counter.sh").chmod(0o755)
    return dest


def _layer(rootfs: Path) -> bytes:
    """The root as an uncompressed tar with fixed owners and times (same bytes each time)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path in sorted(rootfs.rglob("*")):
            info = tf.gettarinfo(str(path), arcname=str(path.relative_to(rootfs)))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            if info.isreg():
                with open(path, "rb") as f:
                    tf.addfile(info, f)
            else:
                tf.addfile(info)
    return buf.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _upload(http: urllib3.PoolManager, base: str, repo: str, data: bytes) -> str:
    digest = _digest(data)
    r = http.request("POST", f"{base}/v2/{repo}/blobs/uploads/")
    if r.status != 202:
        raise RuntimeError(f"registry: starting an upload to {repo} answered {r.status}")
    location = r.headers["Location"]
    url = location if location.startswith("http") else base + location
    url += ("&" if "?" in url else "?") + f"digest={digest}"
    r = http.request("PUT", url, body=data,
                     headers={"Content-Type": "application/octet-stream"})
    if r.status != 201:
        raise RuntimeError(f"registry: uploading {digest} answered {r.status}")
    return digest


def push_rootfs(registry: str, repo: str, tag: str, rootfs: Path,
                config: dict[str, Any]) -> str:
    """Push `rootfs` as a one-layer OCI image to the plain-HTTP registry `registry`
    (host:port); `config`: the image config's `config` (Cmd, Env...). Returns the
    reference `registry/repo:tag`."""
    layer = _layer(rootfs)
    image_config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
    }).encode()
    base = f"http://{registry}"
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(30))
    try:
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": _OCI_MANIFEST,
            "config": {"mediaType": _OCI_CONFIG, "size": len(image_config),
                       "digest": _upload(http, base, repo, image_config)},
            "layers": [{"mediaType": _OCI_LAYER, "size": len(layer),
                        "digest": _upload(http, base, repo, layer)}],
        }).encode()
        r = http.request("PUT", f"{base}/v2/{repo}/manifests/{tag}", body=manifest,
                         headers={"Content-Type": _OCI_MANIFEST})
        if r.status != 201:
            raise RuntimeError(f"registry: the manifest of {repo}:{tag} answered {r.status}")
    finally:
        http.clear()
    return f"{registry}/{repo}:{tag}"


def push_counter_image(registry: str, repo: str, tag: str, workdir: Path,
                       env: tuple[str, ...] = ()) -> str:
    """Build the counter's root in `workdir` and push it; returns its reference. `env`:
    more of the config's Env (NAME=VALUE), making an image of its own (another digest)."""
    rootfs = counter_rootfs(workdir / "rootfs")
    return push_rootfs(registry, repo, tag, rootfs, {
        "Cmd": ["/bin/sh", "/counter.sh"],
        "Env": ["PATH=/bin", *env],
    })


def counter_pod(name: str, image: str, *, secret: str, node: str, interval: float = 1.0,
                ballast_mib: int = 0, volumes: bool = True) -> dict[str, Any]:
    """The pod (a manifest as a dict) that runs the counter on `node`."""
    env = [{"name": "SECRET", "value": secret}, {"name": "INTERVAL", "value": str(interval)}]
    if ballast_mib:
        env.append({"name": "BALLAST_MIB", "value": str(ballast_mib)})
    container: dict[str, Any] = {"name": "counter", "image": image, "env": env}
    spec: dict[str, Any] = {"nodeName": node, "containers": [container],
                            "terminationGracePeriodSeconds": 1}
    if volumes:
        container["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
        spec["volumes"] = [{"name": "data", "emptyDir": {}}]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
            "spec": spec}


def counts(log: str) -> list[int]:
    """The counter's values in its log, in order."""
    return [int(line[len(LINE_PREFIX):]) for line in log.splitlines()
            if line.startswith(LINE_PREFIX) and line[len(LINE_PREFIX):].isdigit()]
