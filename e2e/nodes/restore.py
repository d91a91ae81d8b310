"""What the node's runtime does when the kubelet creates and starts a container from a
pulled image, in particular a checkpoint image (FORMATS.md §4, §5; the release
facts and their sources are in runtime_releases.py).

`restore_path()` says which way a CreateContainer goes:

- "crio": CRI-O 1.25+ whose restore level in effect is checkpoint_restore,
  and an image whose OCI manifest carries
  `io.kubernetes.cri-o.annotations.checkpoint.name` (CRI-O reads only the
  manifest's annotations: not the config's labels, not an index's): restored;
- "containerd": containerd 2.1-2.3 with restore on, and an image whose
  top-level document (index or manifest) carries
  `org.criu.checkpoint.container.name`: containerd's CRImportCheckpoint,
  which needs spec.dump, config.dump and status.dump (a CRI-O archive has no
  status.dump) and pulls the base image without the pod's pull secrets;
- "containerd-disabled": containerd 2.2.7+/2.3.4+ without
  `enable_experimental_restore_via_create`: refused with containerd's words;
- "plain": everything else creates an ordinary container from the image:
  CRI-O with restore off skips the checkpoint detection entirely, containerd
  2.0 and 2.4+ never look for one.

An ordinary container from a checkpoint image fails as the runtime would:
the image has no Entrypoint/Cmd ("no command specified" unless the pod gives
a command), and its root holds the archive, not the program.

Restoring follows CRI-O's CRImportCheckpoint: spec.dump and config.dump must
be there, spec.dump's `io.kubernetes.cri-o.Annotations` must be JSON, and
every mount in spec.dump (except /proc, /dev, /sys and the other runtime
mounts CRI-O skips) must be among the mounts the kubelet asks for: the
container's volumeMounts, /etc/hosts, its terminationMessagePath and the
service-account token directory. Otherwise: `restoring "<image ID>" expects
following bind mounts defined (<paths>)`, the image ID being what the kubelet
passes as the image (the config digest's hex). CRI-O does not compare the
checkpointed container's name with the new container's. It then creates the
container on config.dump's image (rootfsImageRef, by ID) and pulls nothing: a
node without it fails with `reading image "<ID>": image not known`
(podstart.py), and the restored container reports that image, not the
checkpoint's, as its image and imageID. Then StartContainer
runs CRIU: the simulated node reads the processes, memory and root-fs changes
back from the archive (restored.py turns them into the pod's annotations).
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from dataclasses import dataclass
from typing import IO, Any

from e2e.nodes.api import Obj
from e2e.nodes.images import PulledImage
from e2e.nodes.nodeconfig import NodeConfig
from e2e.nodes.runtime_releases import CONTAINERD_RESTORE_DISABLED, containerd_restore

__all__ = [
    "CHECKPOINT_ANNOTATION",
    "CreateError",
    "LayerRoot",
    "check_containerd",
    "check_ordinary",
    "is_checkpoint_image",
    "kubelet_mounts",
    "prepare_restore",
    "restore_path",
]

CHECKPOINT_ANNOTATION = "io.kubernetes.cri-o.annotations.checkpoint.name"
#: What containerd looks for (checkpointctl's CheckpointAnnotationName).
CONTAINERD_CHECKPOINT_ANNOTATION = "org.criu.checkpoint.container.name"
CRIO_ANNOTATIONS = "io.kubernetes.cri-o.Annotations"
#: Mounts CRI-O sets up anew on restore instead of requiring them (container_restore.go).
IGNORED_MOUNTS = frozenset({
    "/proc", "/dev", "/dev/pts", "/dev/mqueue", "/sys", "/sys/fs/cgroup", "/dev/shm",
    "/etc/resolv.conf", "/etc/hostname", "/etc/passwd", "/etc/group", "/run/secrets",
    "/run/.containerenv",
})
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class CreateError(Exception):
    """The runtime refused: `reason` is the kubelet's waiting reason
    (CreateContainerError, RunContainerError), str() the runtime's message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def is_checkpoint_image(image: PulledImage) -> bool:
    """Whether CRI-O would take `image` for a checkpoint image."""
    return CHECKPOINT_ANNOTATION in image.annotations


def restore_path(config: NodeConfig, image: PulledImage) -> str:
    """Which way the node's CreateContainer takes `image`: crio | containerd |
    containerd-disabled | plain (see the module's docstring)."""
    if config.runtime_name == "cri-o":
        restores = config.runtime_version >= (1, 25, 0) and config.level == "checkpoint_restore"
        return "crio" if restores and is_checkpoint_image(image) else "plain"
    if config.runtime_name == "containerd" and \
            CONTAINERD_CHECKPOINT_ANNOTATION in image.top_annotations:
        mode = containerd_restore(config.runtime_version,
                                  config.enable_experimental_restore_via_create)
        return {"restore": "containerd", "disabled": "containerd-disabled"}.get(mode, "plain")
    return "plain"


def kubelet_mounts(container: dict[str, Any]) -> list[str]:
    """The container paths of the mounts the kubelet puts in CreateContainer."""
    paths = [str(m["mountPath"]) for m in container.get("volumeMounts") or []
             if isinstance(m, dict) and m.get("mountPath")]
    if "/etc/hosts" not in paths:
        paths.append("/etc/hosts")
    termination = container.get("terminationMessagePath", "/dev/termination-log")
    if termination:
        paths.append(str(termination))
    return paths  # the service account's: a volumeMount the API server's admission added


class LayerRoot:
    """The root file system an image's layers make, read from their tars."""

    def __init__(self, image: PulledImage) -> None:
        self._tars: list[tarfile.TarFile] = []
        for layer in reversed(image.layers):  # the top layer wins
            if layer.path is not None:
                self._tars.append(tarfile.open(layer.path))  # noqa: SIM115 (closed by close())

    def close(self) -> None:
        """Close the layer files."""
        for tf in self._tars:
            tf.close()

    def __enter__(self) -> LayerRoot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _find(self, name: str) -> tuple[tarfile.TarFile, tarfile.TarInfo] | None:
        name = posixpath.normpath("/" + name).lstrip("/")
        for tf in self._tars:
            for candidate in (name, "./" + name):
                try:
                    return tf, tf.getmember(candidate)
                except KeyError:
                    continue
        return None

    def exists(self, name: str) -> bool:
        """Whether the root has `name` (any kind of entry)."""
        return self._find(name) is not None

    def open(self, name: str) -> IO[bytes] | None:
        """A seekable reader of a regular file, or None."""
        found = self._find(name)
        if found is None or not found[1].isreg():
            return None
        return found[0].extractfile(found[1])

    def read(self, name: str) -> bytes | None:
        """A regular file's bytes, or None."""
        f = self.open(name)
        return f.read() if f is not None else None


def _argv0(container: dict[str, Any], image: PulledImage) -> str | None:
    config = image.container_config
    command = list(container.get("command") or [])
    args = list(container.get("args") or [])
    if not command:
        if not args:
            args = list(config.get("Cmd") or [])
        command = list(config.get("Entrypoint") or [])
    argv = command + args
    return str(argv[0]) if argv else None


def _on_path(root: LayerRoot, argv0: str, image: PulledImage) -> bool:
    if "/" in argv0:
        return root.exists(argv0)
    env = [str(e) for e in image.container_config.get("Env") or []]
    path = next((e[5:] for e in env if e.startswith("PATH=")), _DEFAULT_PATH)
    return any(root.exists(posixpath.join(d or "/", argv0)) for d in path.split(":"))


def check_ordinary(image: PulledImage, container: dict[str, Any], config: NodeConfig,
                   container_id: str) -> None:
    """CreateError if an ordinary container from `image` could not be created and
    started (no command; the program not in the image's root)."""
    argv0 = _argv0(container, image)
    containerd = config.runtime_name == "containerd"
    if argv0 is None:
        message = "no command specified"
        if containerd:
            message = f'failed to generate container "{container_id}" spec: {message}'
        raise CreateError("CreateContainerError", message)
    with LayerRoot(image) as root:
        if _on_path(root, argv0, image):
            return
    missing = f"stat {argv0}: no such file or directory" if "/" in argv0 \
        else "executable file not found in $PATH"
    runc = f'runc create failed: unable to start container process: exec: "{argv0}": {missing}'
    if containerd:  # containerd runs runc at StartContainer
        raise CreateError("RunContainerError", "failed to create containerd task: failed to "
                          f"create shim task: OCI runtime create failed: {runc}: unknown")
    raise CreateError("CreateContainerError", f"container create failed: {runc}")


@dataclass
class Checkpoint:
    """A checkpoint image CRI-O accepted at CreateContainer."""

    spec: dict[str, Any]
    config: dict[str, Any]
    annotations: dict[str, str]


def _read_json(root: LayerRoot, name: str, image: PulledImage) -> dict[str, Any]:
    data = root.read(name)
    mount_point = f"/var/lib/containers/storage/overlay/{image.image_id[7:]}/merged"
    if data is None:
        raise CreateError("CreateContainerError", f'failed to read "{name}": open '
                          f"{mount_point}/{name}: no such file or directory")
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise CreateError("CreateContainerError", f'failed to read "{name}": {e}') from None
    if not isinstance(doc, dict):
        raise CreateError("CreateContainerError", f'failed to read "{name}": not an object')
    return doc


def prepare_restore(image: PulledImage, root: LayerRoot, pod: Obj,
                    container: dict[str, Any]) -> Checkpoint:
    """CRI-O's checks at CreateContainer (CreateError CreateContainerError)."""
    spec = _read_json(root, "spec.dump", image)
    config = _read_json(root, "config.dump", image)
    raw = (spec.get("annotations") or {}).get(CRIO_ANNOTATIONS, "")
    try:
        original = json.loads(raw) if raw else None
    except ValueError:
        original = None
    if not isinstance(original, dict):
        detail = "unexpected end of JSON input" if not raw else "invalid JSON"
        raise CreateError("CreateContainerError", f'failed to read "{CRIO_ANNOTATIONS}": '
                          f"{detail}")
    wanted = set(kubelet_mounts(container))
    missing = [str(m.get("destination")) for m in spec.get("mounts") or []
               if isinstance(m, dict) and m.get("destination") not in IGNORED_MOUNTS
               and m.get("destination") not in wanted]
    if missing:
        # The kubelet passes the image ID as the image; CRI-O quotes it.
        raise CreateError("CreateContainerError",
                          f'restoring "{image.image_id.removeprefix("sha256:")}" expects '
                          f'following bind mounts defined ({",".join(missing)})')
    return Checkpoint(spec, config, {str(k): str(v) for k, v in original.items()})


def check_containerd(image: PulledImage, root: LayerRoot, config: NodeConfig) -> Checkpoint:
    """containerd's CRImportCheckpoint up to its base-image pull (the caller's), or a
    CreateError CreateContainerError with containerd's words. It takes the original
    labels and annotations from status.dump and checks no bind mounts."""
    if restore_path(config, image) == "containerd-disabled":
        raise CreateError("CreateContainerError", CONTAINERD_RESTORE_DISABLED)
    if config.level == "none" and config.runtime_version >= (2, 2, 7):
        raise CreateError("CreateContainerError", "checkpoint restore is not enabled: criu "
                          "binary not found in shim path or system PATH")
    # os.MkdirTemp("", "checkpoint"): a random number after the prefix.
    mount_point = f"/tmp/checkpoint{int(image.image_id[7:15], 16) % 10**9}"
    documents = {}
    for name in ("spec.dump", "config.dump", "status.dump"):
        data = root.read(name)
        if data is None:
            raise CreateError("CreateContainerError", f'failed to read "{name}": open '
                              f"{mount_point}/{name}: no such file or directory")
        try:
            documents[name] = json.loads(data)
        except ValueError as e:
            raise CreateError("CreateContainerError", f'failed to read "{name}": {e}') from None
    spec, config_dump = documents["spec.dump"], documents["config.dump"]
    return Checkpoint(spec if isinstance(spec, dict) else {},
                      config_dump if isinstance(config_dump, dict) else {}, {})
