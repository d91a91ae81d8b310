"""What a simulated runtime writes when the kubelet asks it to checkpoint a container.

The archive is e2e.archives.archivegen's CRI-O (or containerd) layout filled from the
Pod: names, uid, container ID, image, pod IP, labels and annotations, the
container's volumeMounts as extra bind mounts, its start time, and processes
and memory that a test chooses through annotations (the keys are documented in
kubelet.py). `plan()` decides everything; `write()` produces the file.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.archives.archivegen import PAGE, ArchiveSpec, Process, build
from e2e.nodes.api import Obj
from e2e.nodes.nodeconfig import NodeConfig

__all__ = [
    "ANNOTATION_PREFIX",
    "CHECKPOINT_DIR",
    "MEMORY_ANNOTATION",
    "PROCESSES_ANNOTATION",
    "RESTORED_ANNOTATION",
    "ROOTFS_ANNOTATION",
    "CheckpointPlan",
    "PlanError",
    "archive_name",
    "container_annotations",
    "find_container",
    "is_running",
    "plan",
    "write",
]

#: Where the kubelet keeps checkpoint archives, on the node.
CHECKPOINT_DIR = "/var/lib/kubelet/checkpoints"
#: Pod annotations under this prefix steer the simulated nodes; they are left out of archives.
ANNOTATION_PREFIX = "sim.migrate.dev/"
PROCESSES_ANNOTATION = ANNOTATION_PREFIX + "processes"
MEMORY_ANNOTATION = ANNOTATION_PREFIX + "memory-mib"
ROOTFS_ANNOTATION = ANNOTATION_PREFIX + "rootfs-diff"
#: Set by a kubelet that restored the container (restored.py): JSON, with its base image.
RESTORED_ANNOTATION = ANNOTATION_PREFIX + "restored"

MIB = 1024 * 1024
_PAGES_PER_MIB = MIB // PAGE
_STATUS_FIELDS = {"containers": "containerStatuses", "initContainers": "initContainerStatuses",
                  "ephemeralContainers": "ephemeralContainerStatuses"}
_VOLUME_PLUGINS = (
    ("emptyDir", "kubernetes.io~empty-dir"), ("configMap", "kubernetes.io~configmap"),
    ("secret", "kubernetes.io~secret"), ("projected", "kubernetes.io~projected"),
    ("downwardAPI", "kubernetes.io~downward-api"), ("persistentVolumeClaim", "kubernetes.io~csi"),
    ("csi", "kubernetes.io~csi"), ("nfs", "kubernetes.io~nfs"),
)
_FILE_HOST_PATH_TYPES = ("File", "FileOrCreate", "Socket", "CharDevice", "BlockDevice")
_TASK_COMM_LEN = 15  # the kernel keeps 15 characters of a command name
_MAX_MEMORY_MIB = 4096


class PlanError(ValueError):
    """A simulator annotation on the pod cannot be used (reported as a runtime error)."""


@dataclass
class CheckpointPlan:
    """What a checkpoint will contain, and how much memory it dumps."""

    spec: ArchiveSpec
    memory_bytes: int

    @property
    def memory_mib(self) -> float:
        return self.memory_bytes / MIB


def find_container(pod: Obj, name: str) -> tuple[str, dict[str, Any]] | None:
    """(spec field, container) of the container, init container or ephemeral container
    called `name` (the kubelet's lookup order), or None."""
    spec = pod.get("spec", {})
    for kind in _STATUS_FIELDS:
        for c in spec.get(kind) or []:
            if isinstance(c, dict) and c.get("name") == name:
                return kind, c
    return None


def _status(pod: Obj, kind: str, name: str) -> dict[str, Any]:
    statuses = pod.get("status", {}).get(_STATUS_FIELDS[kind]) or []
    return next((s for s in statuses if s.get("name") == name), {})


def is_running(pod: Obj, kind: str, name: str) -> bool:
    """Whether the runtime has this container running (what CRI can checkpoint)."""
    return bool(_status(pod, kind, name).get("state", {}).get("running"))


def archive_name(pod: str, namespace: str, container: str, when: dt.datetime) -> str:
    """`checkpoint-<pod>_<namespace>-<container>-<RFC 3339, seconds>.tar` (the kubelet's
    name: two checkpoints of a container within one second share it)."""
    stamp = when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"checkpoint-{pod}_{namespace}-{container}-{stamp}.tar"


def _image_comm(image: str) -> str:
    last = image.split("@")[0].rsplit("/", 1)[-1]
    return (last.split(":")[0] or "app")[:_TASK_COMM_LEN]


def _default_env(pod: Obj, container: dict[str, Any]) -> list[str]:
    env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           f"HOSTNAME={pod['spec'].get('hostname') or pod['metadata']['name']}"]
    env += [f"{e['name']}={e['value']}" for e in container.get("env") or []
            if isinstance(e, dict) and e.get("name") and isinstance(e.get("value"), str)]
    env += ["KUBERNETES_SERVICE_HOST=10.96.0.1", "KUBERNETES_SERVICE_PORT=443",
            "KUBERNETES_PORT=tcp://10.96.0.1:443"]
    return env


def _default_processes(pod: Obj, container: dict[str, Any]) -> list[Process]:
    comm = _image_comm(str(container.get("image", "")))
    argv = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
    return [Process(1, 0, comm, argv or [comm], _default_env(pod, container))]


def _strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PlanError(f"{what} must be a list of strings")
    return list(value)


def parse_processes(raw: str, key: str, default_env: list[str]) -> list[Process]:
    """The processes a `sim.migrate.dev/processes` annotation describes."""
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise PlanError(f"annotation {key}: not JSON: {e}") from None
    if not isinstance(data, list) or not data:
        raise PlanError(f"annotation {key}: expected a non-empty JSON list of processes")
    out: list[Process] = []
    for i, entry in enumerate(data):
        where = f"annotation {key}[{i}]"
        if not isinstance(entry, dict):
            raise PlanError(f"{where}: expected an object")
        unknown = sorted(set(entry) - {"pid", "ppid", "comm", "argv", "env", "heap"})
        if unknown:
            raise PlanError(f"{where}: unknown key(s) {', '.join(unknown)}")
        pid = entry.get("pid", i + 1)
        ppid = entry.get("ppid", 0 if i == 0 else out[0].pid)
        if not isinstance(pid, int) or isinstance(pid, bool) or pid < 1:
            raise PlanError(f"{where}: pid must be a positive integer")
        if not isinstance(ppid, int) or isinstance(ppid, bool) or ppid < 0:
            raise PlanError(f"{where}: ppid must be an integer >= 0")
        if any(p.pid == pid for p in out):
            raise PlanError(f"{where}: pid {pid} is listed twice")
        argv = _strings(entry["argv"], f"{where}.argv") if "argv" in entry else []
        comm = entry.get("comm") or (argv[0].rsplit("/", 1)[-1] if argv else "")
        if not isinstance(comm, str) or not comm:
            raise PlanError(f"{where}: needs `comm` or `argv`")
        env = _strings(entry["env"], f"{where}.env") if "env" in entry else list(default_env)
        heap = entry.get("heap", "")
        if not isinstance(heap, str):
            raise PlanError(f"{where}: heap must be a string")
        out.append(Process(pid, ppid, comm[:_TASK_COMM_LEN], argv or [comm], env,
                           heap=heap.encode()))
    return out


def _for_container(annotations: dict[str, str], key: str, container: str) -> tuple[str, str | None]:
    # `<key>.<container>` wins over the pod-wide `<key>`.
    specific = f"{key}.{container}"
    return (specific, annotations[specific]) if specific in annotations \
        else (key, annotations.get(key))


def _memory_mib(annotations: dict[str, str], container: str) -> float:
    key, raw = _for_container(annotations, MEMORY_ANNOTATION, container)
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise PlanError(f"annotation {key}: {raw!r} is not a number") from None
    if not 0 <= value <= _MAX_MEMORY_MIB:
        raise PlanError(f"annotation {key}: {raw!r} is out of range "
                        f"(0 to {_MAX_MEMORY_MIB})")
    return value


def _rootfs_files(annotations: dict[str, str], container: str) -> dict[str, bytes]:
    key, raw = _for_container(annotations, ROOTFS_ANNOTATION, container)
    if raw is None:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise PlanError(f"annotation {key}: not JSON: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise PlanError(f"annotation {key}: expected an object path -> text")
    return {str(k).lstrip("/"): v.encode() for k, v in data.items() if str(k).strip("/")}


def _volumes(pod: Obj, container: dict[str, Any]) -> list[dict[str, Any]]:
    uid = pod["metadata"]["uid"]
    pod_dir = f"/var/lib/kubelet/pods/{uid}"
    volumes = {v.get("name"): v for v in pod["spec"].get("volumes") or [] if isinstance(v, dict)}
    out: list[dict[str, Any]] = []
    for index, mount in enumerate(container.get("volumeMounts") or []):
        if not isinstance(mount, dict) or not mount.get("mountPath"):
            continue
        name = str(mount.get("name", ""))
        volume = volumes.get(name, {})
        file_type, permissions = "directory", 0o755
        if "hostPath" in volume:
            host_path = volume.get("hostPath") or {}
            source = str(host_path.get("path", "/"))
            if host_path.get("type") in _FILE_HOST_PATH_TYPES:
                file_type, permissions = "file", 0o644
        else:
            plugin = next((p for key, p in _VOLUME_PLUGINS if key in volume),
                          "kubernetes.io~empty-dir")
            source = f"{pod_dir}/volumes/{plugin}/{name}"
            if "persistentVolumeClaim" in volume:
                claim = (volume.get("persistentVolumeClaim") or {}).get("claimName", name)
                source = f"{pod_dir}/volumes/{plugin}/pvc-{claim}/mount"
            if "emptyDir" in volume:
                permissions = 0o777
        if mount.get("subPath"):
            source = f"{pod_dir}/volume-subpaths/{name}/{container['name']}/{index}"
            if any(k in volume for k in ("configMap", "secret")):
                file_type, permissions = "file", 0o644
        out.append({"destination": str(mount["mountPath"]), "source": source,
                    "file_type": file_type, "permissions": permissions})
    return out


def container_annotations(pod: Obj, container: dict[str, Any], restarts: int
                           ) -> dict[str, str]:
    # What CRI-O records as the container's annotations: the pod's (the
    # sim.migrate.dev keys left out) and those the kubelet adds.
    meta, spec = pod["metadata"], pod["spec"]
    out = {k: str(v) for k, v in (meta.get("annotations") or {}).items()
           if not k.startswith(ANNOTATION_PREFIX)}
    out.update({
        "io.kubernetes.container.restartCount": str(restarts),
        "io.kubernetes.container.terminationMessagePath":
            str(container.get("terminationMessagePath", "/dev/termination-log")),
        "io.kubernetes.container.terminationMessagePolicy":
            str(container.get("terminationMessagePolicy", "File")),
        "io.kubernetes.pod.terminationGracePeriod":
            str(spec.get("terminationGracePeriodSeconds", 30)),
        "kubernetes.io/config.seen": str(meta.get("creationTimestamp", "")),
        "kubernetes.io/config.source": "api",
    })
    return out


def _base_image(annotations: dict[str, str], container: str, image: str, image_ref: str,
                shown: str) -> tuple[str, str]:
    # A restored container runs on the checkpoint's base image (CRI-O restores onto
    # config.dump's rootfsImageRef): a new checkpoint names that one, by the name the node
    # shows for it (``shown``, the status image: CRI-O's SomeNameOfTheImage, which its
    # checkpoint writes as rootfsImageName; internal/lib/checkpoint.go, v1.36.3).
    try:
        record = json.loads(annotations.get(f"{RESTORED_ANNOTATION}.{container}", "{}"))
    except ValueError:
        return image, image_ref
    if not isinstance(record, dict) or not record.get("baseImage"):
        return image, image_ref
    return shown or str(record["baseImage"]), str(record.get("baseImageRef")
                                                  or record["baseImage"])


def _stats(processes: list[Process], bulk_pages: int, seconds: float) -> dict[str, int]:
    written = bulk_pages + sum(
        -(-len(b"\0".join(a.encode() for a in p.argv + p.env) + b"\0\0") // PAGE)
        + max(1, -(-len(p.heap) // PAGE)) for p in processes)
    frozen = max(int(seconds * 1_000_000), 2_000 + 40 * written)
    return {"freezing_time": 1_200 + 150 * len(processes), "frozen_time": frozen,
            "memdump_time": frozen // 2, "memwrite_time": frozen // 3,
            "pages_scanned": written + 256 * len(processes), "pages_skipped_parent": 0,
            "pages_written": written, "irmap_resolve": 0, "pages_lazy": 0}


def _nano_stamp(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def plan(pod: Obj, container_name: str, config: NodeConfig, when: dt.datetime, *,
         storage_id: Callable[[str], str | None] = lambda _: None) -> CheckpointPlan:
    """The archive a checkpoint of `container_name` (running, in `pod`) would write now;
    PlanError when a sim.migrate.dev annotation is malformed. storage_id: the ID of the
    image a container reports as its imageID (REPO@DIGEST), if the node holds it."""
    found = find_container(pod, container_name)
    if found is None:
        raise PlanError(f"container {container_name} does not exist")
    kind, container = found
    meta, status = pod["metadata"], pod.get("status", {})
    annotations = {str(k): str(v) for k, v in (meta.get("annotations") or {}).items()}
    default_env = _default_env(pod, container)
    key = f"{PROCESSES_ANNOTATION}.{container_name}"
    if key not in annotations:
        key = PROCESSES_ANNOTATION
    processes = (parse_processes(annotations[key], key, default_env) if key in annotations
                 else _default_processes(pod, container))
    bulk_pages = int(_memory_mib(annotations, container_name) * _PAGES_PER_MIB)
    if bulk_pages and len(processes) == 1:
        # archivegen dumps bulk pages as the second process's memory; a lone
        # process gets them as (zeroed) heap instead.
        only = processes[0]
        processes = [Process(only.pid, only.ppid, only.comm, only.argv, only.env,
                             heap=only.heap + bytes(bulk_pages * PAGE), state=only.state)]
        bulk_pages = 0
    memory = bulk_pages * PAGE + sum(len(p.heap) for p in processes)
    # How long the dump takes (the node's fault), for the statistics.
    delay_seconds = memory / MIB * config.checkpoint_delay_per_mib
    ctr_status = _status(pod, kind, container_name)
    container_id = str(ctr_status.get("containerID", "")).partition("://")[2] or \
        secrets.token_hex(32)
    image = str(container.get("image", ""))
    image_ref = str(ctr_status.get("imageID") or image)
    image, image_ref = _base_image(annotations, container_name, image, image_ref,
                                   str(ctr_status.get("image") or ""))
    started = (ctr_status.get("state", {}).get("running") or {}).get("startedAt") or \
        status.get("startTime") or meta.get("creationTimestamp") or _nano_stamp(when)
    spec = ArchiveSpec(
        pod=meta["name"], namespace=meta["namespace"], pod_uid=meta["uid"],
        container=container_name, image=image, image_ref=image_ref,
        image_id=storage_id(image_ref) or image_ref.rpartition("sha256:")[2]
        or secrets.token_hex(32),
        container_id=container_id, ip=str(status.get("podIP", "")),
        runtime="runc" if config.runtime_name == "cri-o" else "io.containerd.runc.v2",
        created=str(started), checkpointed=_nano_stamp(when),
        hostname=str(pod["spec"].get("hostname") or meta["name"]),
        engine="cri-o" if config.runtime_name == "cri-o" else "containerd",
        labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
        annotations=container_annotations(pod, container,
                                           int(ctr_status.get("restartCount", 0))),
        volumes=_volumes(pod, container), processes=processes,
        service_account=pod["spec"].get("automountServiceAccountToken") is not False,
        rootfs_files=_rootfs_files(annotations, container_name),
        stats=_stats(processes, bulk_pages, delay_seconds),
        parent_run=False, bulk_pages=bulk_pages, use_crit=None,
    )
    return CheckpointPlan(spec, memory)


def write(checkpoint: CheckpointPlan, out: Path) -> Path:
    """Write the archive to `out` (mode 0600), atomically: built aside, then renamed."""
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    try:
        build(checkpoint.spec, tmp)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out
