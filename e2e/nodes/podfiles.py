"""A pod's files on its node, for containers a node agent really runs (toolrun.py).

The kubelet sets up what a container sees before it starts it; here that is a
directory per pod on the node, STATE/nodes/NODE/var/lib/kubelet/pods/UID/:

    volumes/kubernetes.io~empty-dir/NAME/     emptyDir volumes
    volumes/kubernetes.io~secret/NAME/        secret volumes: one 0600 file per key
    volumes/kubernetes.io~projected/NAME/     projected volumes (the API server's
                                              ServiceAccount admission adds
                                              kube-api-access-*: token, ca.crt, namespace)
    containers/CONTAINER/termination-log      terminationMessagePath, written by the process
    containers/CONTAINER/home, .../tmp        HOME and TMPDIR when no mount provides them

hostPath volumes are the node's own files, STATE/nodes/NODE/<path>, checked
as the kubelet checks their `type` (Directory, DirectoryOrCreate, File,
FileOrCreate; other types only need the path to exist). Directories are 0700.

`Mounts` maps each container path (mountPath, with subPath applied, and the
termination message path) to its place here. These are the volumes the tool's
own pods use (a node build's, a scheduled drain's); others (configMap,
persistentVolumeClaim, ...) fail the container with a message, as a failed
mount would keep it from starting. readOnly is not
enforced: the process runs as the user running the node agents.

The service account's token is issued (bound to the pod) when a projected
volume asks for one; the files holding it go when the last container of the
pod has ended.
"""

from __future__ import annotations

import base64
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from e2e.nodes.api import NodeApi, Obj

__all__ = ["SERVICE_ACCOUNT_PATH", "MountFailed", "Mounts", "PodFiles", "TokenIssuer"]

#: issue(pod, account): a token for ServiceAccount `account` bound to `pod`.
TokenIssuer = Callable[[Obj, str], str]

SERVICE_ACCOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
TERMINATION_LOG = "/dev/termination-log"


class MountFailed(Exception):
    """A volume could not be set up: the container cannot start (the message says why)."""


@dataclass
class Mounts:
    """Container paths and where they are on this machine."""

    paths: dict[str, Path] = field(default_factory=dict)

    def host(self, path: str) -> Path | None:
        """Where container `path` is here, through the longest mount holding it."""
        for mount in sorted(self.paths, key=len, reverse=True):
            if path == mount or path.startswith(mount.rstrip("/") + "/"):
                rest = path[len(mount):].lstrip("/")
                return self.paths[mount] / rest if rest else self.paths[mount]
        return None

    def translate(self, value: str) -> str:
        """`value` with a leading container path (also after `--opt=`) made a host path."""
        head, eq, tail = value.partition("=")
        if eq and value.startswith("-") and tail.startswith("/"):
            return f"{head}={self.translate(tail)}"
        if not value.startswith("/"):
            return value
        found = self.host(value)
        return str(found) if found is not None else value


@dataclass
class _Pod:
    root: Path
    users: int = 0  # containers running with these files
    token: str | None = None
    volumes: dict[str, Path] = field(default_factory=dict)  # set up, by volume name


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    path.chmod(0o600)


class PodFiles:
    """Prepares and releases the per-pod directories of one cluster's nodes."""

    def __init__(self, api: Callable[[str], NodeApi], node_dir: Callable[[str], Path],
                 token: TokenIssuer) -> None:
        self.api = api
        self.node_dir = node_dir
        self.token = token
        self._pods: dict[str, _Pod] = {}
        self._lock = threading.Lock()

    def pod_dir(self, pod: Obj) -> Path:
        """STATE/nodes/NODE/var/lib/kubelet/pods/UID."""
        return self.node_dir(str(pod["spec"]["nodeName"])) / "var/lib/kubelet/pods" / \
            str(pod["metadata"]["uid"])

    def prepare(self, pod: Obj, container: Obj) -> Mounts:
        """Set up the pod's volumes (each once per pod) and map `container`'s mounts;
        MountFailed if one cannot be. Pair every successful call with release()."""
        uid = pod["metadata"]["uid"]
        with self._lock:
            entry = self._pods.setdefault(uid, _Pod(_private_dir(self.pod_dir(pod))))
            entry.users += 1
            try:
                return self._mounts(pod, container, entry)
            except BaseException:
                entry.users -= 1
                if entry.users == 0:
                    self._forget(uid, entry)
                raise

    def release(self, pod: Obj) -> None:
        """One container of the pod has ended; the last one removes the token and the
        secrets written for the pod."""
        uid = pod["metadata"]["uid"]
        with self._lock:
            entry = self._pods.get(uid)
            if entry is None:
                return
            entry.users -= 1
            if entry.users == 0:
                self._forget(uid, entry)

    def _forget(self, uid: str, entry: _Pod) -> None:
        del self._pods[uid]
        # As the kubelet tears down a terminated pod's volumes: the projected one
        # (kube-api-access-*) holds the token.
        for secret_dir in ("volumes/kubernetes.io~secret", "volumes/kubernetes.io~projected"):
            shutil.rmtree(entry.root / secret_dir, ignore_errors=True)

    # -- what the pod gets -----------------------------------------------------------------

    def _mounts(self, pod: Obj, container: Obj, entry: _Pod) -> Mounts:
        volumes = {v.get("name"): v for v in pod["spec"].get("volumes") or []}
        mounts, root = Mounts(), entry.root
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount.get("name"))
            if volume is None:
                raise MountFailed(f"volume {mount.get('name')!r} is not in the pod")
            where = entry.volumes.get(volume["name"])
            if where is None:
                where = entry.volumes[volume["name"]] = self._volume(pod, volume, entry)
            if mount.get("subPath"):
                where = where / str(mount["subPath"]).lstrip("/")
            mounts.paths[str(mount["mountPath"])] = where
        own = _private_dir(root / "containers" / container["name"])
        log = own / "termination-log"
        _write_private(log, b"")
        mounts.paths[str(container.get("terminationMessagePath") or TERMINATION_LOG)] = log
        return mounts

    def _volume(self, pod: Obj, volume: Obj, entry: _Pod) -> Path:
        name, root = str(volume["name"]), entry.root
        if "hostPath" in volume:
            return self._host_path(pod, name, volume["hostPath"])
        if "emptyDir" in volume:
            return _private_dir(root / "volumes/kubernetes.io~empty-dir" / name)
        if "secret" in volume:
            source = volume["secret"]
            secret = self._get(pod, "Secret", source.get("secretName"))
            if secret is None and not source.get("optional"):
                raise MountFailed(f'MountVolume.SetUp failed for volume "{name}" : secret '
                                  f'"{source.get("secretName")}" not found')
            data = {k: base64.b64decode(v) for k, v in ((secret or {}).get("data") or {}).items()}
            return _write_files(root / "volumes/kubernetes.io~secret" / name,
                                _items(data, source.get("items")), name)
        if "projected" in volume:
            return self._projected(pod, name, volume["projected"], entry)
        kind = next((k for k in volume if k != "name"), "?")
        raise MountFailed(f'volume "{name}": {kind} volumes are not supported by the '
                          "node agents' tool runner")

    def _projected(self, pod: Obj, name: str, projected: dict[str, Any], entry: _Pod) -> Path:
        """A projected volume: the API server's admission gives every pod one
        (kube-api-access-*: the service account's token, kube-root-ca.crt's ca.crt,
        the namespace)."""
        files: dict[str, bytes] = {}
        for source in projected.get("sources") or []:
            if "serviceAccountToken" in source:
                if entry.token is None:
                    account = pod["spec"].get("serviceAccountName") or "default"
                    entry.token = self.token(pod, account)
                files[str(source["serviceAccountToken"].get("path") or "token")] = \
                    entry.token.encode()
            if "configMap" in source:
                ref = source["configMap"]
                found = self._get(pod, "ConfigMap", ref.get("name")) or {}
                data = {k: str(v).encode() for k, v in (found.get("data") or {}).items()}
                files.update(_items(data, ref.get("items")))
            for item in (source.get("downwardAPI") or {}).get("items") or []:
                value: Any = pod
                for part in str((item.get("fieldRef") or {}).get("fieldPath", "")).split("."):
                    value = value.get(part) if isinstance(value, dict) else None
                files[str(item["path"])] = str(value or "").encode()
        return _write_files(entry.root / "volumes/kubernetes.io~projected" / name, files, name)

    def _get(self, pod: Obj, kind: str, name: Any) -> Obj | None:
        return self.api(pod["spec"]["nodeName"]).get(kind, pod["metadata"]["namespace"],
                                                     str(name or ""))

    def _host_path(self, pod: Obj, name: str, source: dict[str, Any]) -> Path:
        path = str(source.get("path", ""))
        if not path.startswith("/") or ".." in PurePosixPath(path).parts:
            raise MountFailed(f'volume "{name}": hostPath {path!r} is not absolute and normal')
        host = self.node_dir(pod["spec"]["nodeName"]) / path.lstrip("/")
        kind = source.get("type") or ""
        if kind == "DirectoryOrCreate" and not host.exists():
            host.mkdir(parents=True, exist_ok=True, mode=0o755)
        elif kind == "FileOrCreate" and not host.exists():
            host.parent.mkdir(parents=True, exist_ok=True)
            host.touch(mode=0o644)
        checks = {"Directory": (host.is_dir, "is not a directory"),
                  "DirectoryOrCreate": (host.is_dir, "is not a directory"),
                  "File": (host.is_file, "is not a file")}
        check, problem = checks.get(kind, (host.exists, "does not exist"))
        if kind and not check():
            raise MountFailed(f'MountVolume.SetUp failed for volume "{name}" : hostPath type '
                              f"check failed: {path} {problem}")
        return host


def _items(data: dict[str, bytes], items: list[dict[str, Any]] | None) -> dict[str, bytes]:
    """The files a volume source's `items` pick (path <- key), else every key."""
    if not items:
        return data
    return {str(i["path"]): data[i["key"]] for i in items if i.get("key") in data}


def _write_files(target: Path, files: dict[str, bytes], volume: str) -> Path:
    """A volume's files, each 0600, in a fresh 0700 directory."""
    shutil.rmtree(target, ignore_errors=True)
    _private_dir(target)
    for path, content in files.items():
        if ".." in PurePosixPath(path).parts:
            raise MountFailed(f'volume "{volume}": item path {path!r} leaves the volume')
        dest = target / path.lstrip("/")
        _private_dir(dest.parent)
        _write_private(dest, content)
    return target
