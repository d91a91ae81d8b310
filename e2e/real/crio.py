"""A CRI-O-layout archive made the way CRI-O makes one: `runc checkpoint`, then packing.

CRI-O checkpoints a container by running ``runc checkpoint --image-path
<dir> --work-path <dir>`` (CRIU writes the images, dump.log and stats-dump)
and packing those with its own metadata. This does the same on the workload
container (runc's state is the one Podman made; --leave-running keeps it
running), so the CRIU part of the archive is real and CRI-O's part
(config.dump, spec.dump annotations, bind.mounts, rootfs-diff.tar, the log
copy) is written as CRI-O writes it, from the container's real spec, root
and log. What it adds over Podman's export: CRI-O's layout, identity
annotations and members (dump.log above all) with real CRIU images.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from e2e.archives.archivegen import Member, write_archive
from e2e.real.podman import PodmanError, PodmanWorld
from e2e.real.workload import EngineView


@dataclass(frozen=True)
class Pod:
    """The Kubernetes names the CRI-O archive carries."""

    name: str = "forensics"
    namespace: str = "evidence"
    uid: str = "2c4e7f9a-1b3d-4e5f-8a6b-7c8d9e0f1a2b"
    container: str = "workload"


def runc_checkpoint(world: PodmanWorld, container_id: str, images: Path, work: Path) -> None:
    """What CRI-O runs: `runc checkpoint`, here leaving the container running."""
    images.mkdir(parents=True)
    work.mkdir(parents=True)
    proc = subprocess.run(["runc", "checkpoint", "--image-path", str(images), "--work-path",
                           str(work), "--leave-running", "--tcp-established", container_id],
                          capture_output=True, text=True, env=world.env, timeout=300, check=False)
    if proc.returncode != 0:
        log = work / "dump.log"
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise PodmanError(f"runc checkpoint failed: {proc.stderr.strip()}\n{tail}")


def _annotations(spec: dict[str, Any], pod: Pod, view: EngineView) -> dict[str, str]:
    a = dict(spec.get("annotations") or {})
    a.update({
        "io.container.manager": "cri-o",
        "io.kubernetes.cri-o.Metadata": json.dumps({"name": pod.container, "attempt": 0}),
        "io.kubernetes.cri-o.IP.0": view.ip,
        "io.kubernetes.cri-o.Created": view.created,
        "io.kubernetes.cri-o.ImageName": view.image,
        "io.kubernetes.cri-o.Labels": json.dumps({"io.kubernetes.pod.name": pod.name,
                                                  "io.kubernetes.pod.namespace": pod.namespace}),
        "io.kubernetes.cri-o.Annotations": json.dumps({"io.kubernetes.container.hash": "0"}),
        "io.kubernetes.cri-o.LogPath": f"/var/log/pods/{pod.namespace}_{pod.name}_{pod.uid}/"
                                       f"{pod.container}/0.log",
        "io.kubernetes.pod.name": pod.name,
        "io.kubernetes.pod.namespace": pod.namespace,
        "io.kubernetes.pod.uid": pod.uid,
        "io.kubernetes.container.name": pod.container,
    })
    return a


def _binds(spec: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for m in spec.get("mounts", []):
        if m.get("type") != "bind" or not os.path.exists(m["source"]):
            continue
        st = os.stat(m["source"])
        out.append({"source": m["source"], "destination": m["destination"],
                    "file_type": "directory" if os.path.isdir(m["source"]) else "file",
                    "permissions": st.st_mode & 0o7777})
    return out


def _rootfs_diff(host_pid: int, view: EngineView) -> bytes:
    """The added files, read through the container's root, as CRI-O packs them."""
    root = f"/proc/{host_pid}/root"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path in sorted(p for p, kind in view.diff.items() if kind == "A"):
            tf.add(root + path, arcname=path.lstrip("/"), recursive=False)
    return buf.getvalue()


def crio_archive(world: PodmanWorld, host_pid: int, view: EngineView, out: Path,
                 pod: Pod) -> Path:
    """Checkpoint the container with runc and pack CRI-O's archive at ``out`` (0600):
    CRIU's images, dump.log and stats-dump, config.dump, spec.dump, bind.mounts (from the
    spec's bind mounts), rootfs-diff.tar, deleted.files and the container's log."""
    scratch = out.parent / f"{out.name}.d"
    runc_checkpoint(world, view.id, scratch / "images", scratch / "work")
    userdata = world.root / "storage" / "overlay-containers" / view.id / "userdata"
    spec = json.loads((userdata / "config.json").read_text())
    spec["annotations"] = _annotations(spec, pod, view)
    config = {
        "id": view.id, "name": f"k8s_{pod.container}_{pod.name}_{pod.namespace}_{pod.uid}_0",
        "rootfsImage": view.image_id, "rootfsImageRef": view.image_id,
        "rootfsImageName": view.image,
        "runtime": "runc", "createdTime": view.created,
        "checkpointedTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "restoredTime": "0001-01-01T00:00:00Z", "restored": False,
    }
    deleted = sorted(p for p, kind in view.diff.items() if kind == "D")
    members: list[tuple[str, Member]] = [
        *((f"checkpoint/{f.name}", f) for f in sorted((scratch / "images").iterdir())),
        ("config.dump", json.dumps(config, indent=2).encode()),
        ("spec.dump", json.dumps(spec, indent=2).encode()),
        ("bind.mounts", json.dumps(_binds(spec)).encode()),
        ("rootfs-diff.tar", _rootfs_diff(host_pid, view)),
        ("deleted.files", json.dumps(deleted).encode()),
        ("dump.log", scratch / "work" / "dump.log"),
        ("stats-dump", scratch / "work" / "stats-dump"),
        ("io.kubernetes.cri-o.LogPath", userdata / "ctr.log"),
    ]
    return write_archive(out, members, int(datetime.now(UTC).timestamp()))
