"""Real containers on a node: runc runs them, CRIU (through `runc checkpoint` and
`runc restore`) checkpoints and restores them, as CRI-O does with its default runtime.

A pod asks for it with the annotation `sim.migrate.dev/runtime: runc` (an
annotation, not the node's config: one node then runs real pods beside the
simulated ones that benchmarks and fault tests need by the hundred, and the
restored pod asks again because `migrate pod` copies the source's annotations).
Its containers' images must come from a registry on 127.0.0.1 (their layers
are what the root file system is made of).

What a container gets, and why:

- a bundle under the node's var/lib/containers/bundles/ID: rootfs/ (the image's
  layers unpacked, then written to in place: no overlay, so the root-fs diff is
  what differs from the files the layers made) and config.json (`runc spec`'s
  defaults, the image's or the pod's command, the image's env plus the
  container's `value` env, hostname the pod's name, CRI-O's annotations);
- fresh pid, ipc, uts, mount and network namespaces: the network namespace is
  new and empty (loopback only), so CRIU dumps it whole and recreates it on the
  other node; no veth, no CNI. The pod IP the kubelet reports is data, as for
  simulated pods. A container that listens on its pod IP does not run here;
- emptyDir volumes as bind mounts of the pod's directory under the node's
  var/lib/kubelet/pods/UID/volumes/kubernetes.io~empty-dir/NAME (new and empty on
  the destination, as Kubernetes makes them); other volumes are not mounted;
- stdin /dev/null, stdout and stderr one pipe that a thread copies to the
  node's var/log/pods/NS_POD_UID/CONTAINER/0.log, as conmon does: runc records
  the pipe in descriptors.json and `runc restore` hands the restored process the
  new pipe in its place (CRIU's --inherit-fd), so the log goes on on the
  destination. The log is raw output (not CRI's timestamped lines), as the
  kubelet API's containerLogs serves it here.

Checkpoint (the kubelet API): `runc checkpoint --leave-running`, then CRI-O's
archive (e2e/real/crio.py's `pack`): CRIU's images, dump.log, stats-dump,
config.dump, spec.dump (the container's config.json), bind.mounts,
rootfs-diff.tar and deleted.files. Restore (a checkpoint image, after
restore.py's CRI-O checks): the base image of config.dump
(`rootfsImageName`) pulled, its layers unpacked, rootfs-diff.tar applied and
deleted.files removed, spec.dump with the new pod's mounts as config.json,
then `runc restore` of the image's checkpoint/ directory. The root-fs diff is
what CRI-O makes with Podman's crutils (pkg/checkpoint/crutils,
CRCreateRootFsDiffTar / CRApplyRootFsDiffTar / CRRemoveDeletedFiles): added
files, changed regular files (with the new directories they are in), and the
deleted paths, removed on restore whole (RemoveAll).

A container that exits is not reported (these are long-running pods); deleting
the pod kills it (`runc delete --force`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import posixpath
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.nodes.api import Obj
from e2e.nodes.checkpoints import container_annotations
from e2e.nodes.images import PulledImage
from e2e.nodes.restore import Checkpoint, CreateError
from e2e.real import tools
from e2e.real.crio import pack

__all__ = ["RUNTIME_ANNOTATION", "RealContainer", "RealRuntime", "RuntimeFailed", "container_id",
           "crio_annotations", "missing"]

#: The pod annotation that asks for real containers (its value: runc).
RUNTIME_ANNOTATION = "sim.migrate.dev/runtime"
_EMPTY_DIR = "kubernetes.io~empty-dir"
_TIMEOUT = 300
_CHUNK = 65536


class RuntimeFailed(Exception):
    """runc or CRIU failed; the message carries its stderr (and CRIU's log tail)."""


def missing() -> str | None:
    """What real containers need that this machine lacks, or None."""
    if os.geteuid() != 0:
        return "real containers need root (runc, CRIU)"
    if shutil.which("runc") is None:
        return "real containers need runc on PATH: run scripts/setup as root"
    criu = tools.tools().criu
    if not criu.is_file():
        return f"real containers need CRIU at {criu}: run scripts/setup as root"
    return None


def container_id(pod: Obj, name: str) -> str:
    """The container's ID (runc's, and the containerID the kubelet reports)."""
    return hashlib.sha256(f"{pod['metadata']['uid']}/{name}".encode()).hexdigest()


def crio_annotations(pod: Obj, container: Obj, image: PulledImage) -> dict[str, str]:
    """What CRI-O writes into a container's config.json annotations (spec.dump's)."""
    meta = pod["metadata"]
    name, ns, uid = str(container["name"]), meta["namespace"], meta["uid"]
    labels = {"io.kubernetes.container.name": name, "io.kubernetes.pod.name": meta["name"],
              "io.kubernetes.pod.namespace": ns, "io.kubernetes.pod.uid": uid}
    return {
        **labels,
        "io.container.manager": "cri-o",
        "io.kubernetes.cri-o.Metadata": json.dumps({"name": name, "attempt": 0}),
        "io.kubernetes.cri-o.Created": dt.datetime.now(dt.UTC).isoformat(),
        "io.kubernetes.cri-o.ImageName": image.image,
        "io.kubernetes.cri-o.ImageRef": image.image_id,
        "io.kubernetes.cri-o.Labels": json.dumps(labels),
        "io.kubernetes.cri-o.Annotations": json.dumps(container_annotations(pod, container, 0)),
        "io.kubernetes.cri-o.LogPath": f"/var/log/pods/{ns}_{meta['name']}_{uid}/{name}/0.log",
        "io.kubernetes.cri-o.SandboxName": f"k8s_{meta['name']}_{ns}_{uid}_0",
    }


@dataclass
class RealContainer:
    """A container runc runs on this node."""

    id: str
    pod: Obj  # the pod as it was when the container started
    name: str
    image: str
    image_id: str
    created: str
    bundle: Path
    log: Path
    base: dict[str, tuple[int, int]]  # the layers' regular files: path -> (size, mtime)
    pump: threading.Thread | None = None

    @property
    def rootfs(self) -> Path:
        return self.bundle / "rootfs"


def _safe_name(name: str) -> str | None:
    """A layer member's path inside the root, or None if it would leave it."""
    path = posixpath.normpath("/" + name).lstrip("/")
    return None if not path or path.startswith("..") else path


def _unpack_layer(layer: Path, rootfs: Path) -> None:
    """One layer tar over `rootfs` (OCI whiteouts `.wh.NAME` remove NAME)."""
    with tarfile.open(layer) as tf:
        members = []
        for m in tf.getmembers():
            name = _safe_name(m.name)
            if name is None:
                continue
            head, _, base = name.rpartition("/")
            if base.startswith(".wh."):
                gone = rootfs / head / base[4:]
                if gone.is_dir() and not gone.is_symlink():
                    shutil.rmtree(gone)
                else:
                    gone.unlink(missing_ok=True)
                continue
            m.name = name
            members.append(m)
        tf.extractall(rootfs, members=members, filter="tar")


def _files(rootfs: Path) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for directory, _dirs, names in os.walk(rootfs):
        for n in names:
            st = os.lstat(os.path.join(directory, n))
            rel = "/" + os.path.relpath(os.path.join(directory, n), rootfs)
            out[rel] = (st.st_size, st.st_mtime_ns)
    return out


def _rootfs_diff(c: RealContainer) -> tuple[bytes, list[str]]:
    """rootfs-diff.tar (files added or changed since the layers made them, with their
    directories) and deleted.files, as CRI-O packs them."""
    now = _files(c.rootfs)
    changed = sorted(p for p, st in now.items() if c.base.get(p) != st)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        dirs: set[str] = set()
        for path in changed:
            parent = posixpath.dirname(path)
            chain = []
            while parent not in ("/", "") and parent not in dirs:
                chain.append(parent)
                dirs.add(parent)
                parent = posixpath.dirname(parent)
            for d in reversed(chain):
                tf.add(str(c.rootfs) + d, arcname=d.lstrip("/"), recursive=False)
            tf.add(str(c.rootfs) + path, arcname=path.lstrip("/"), recursive=False)
    return buf.getvalue(), sorted(set(c.base) - set(now))


class RealRuntime:
    """The real containers of one node.

    root: the node's files on this machine (bundles, runc's state, volumes, logs).
    """

    def __init__(self, node: str, root: Path, *, log: Callable[[str], None] = lambda s: None
                 ) -> None:
        self.node = node
        self.root = root
        self.state = root / "run/runc"
        self.bundles = root / "var/lib/containers/bundles"
        self.pod_logs = root / "var/log/pods"
        self._log = log
        self._containers: dict[str, RealContainer] = {}
        self._lock = threading.Lock()
        self.env = dict(os.environ)
        # runc runs the first `criu` on PATH: the one scripts/setup built.
        self.env["PATH"] = f"{tools.tools().criu_bin_dir}:{self.env.get('PATH', '/usr/bin:/bin')}"

    @staticmethod
    def wants(pod: Obj) -> bool:
        """Whether the pod asks for real containers."""
        return (pod["metadata"].get("annotations") or {}).get(RUNTIME_ANNOTATION) == "runc"

    def find(self, pod: Obj, name: str) -> RealContainer | None:
        """The pod's container `name` if runc runs it here."""
        with self._lock:
            return self._containers.get(container_id(pod, name))

    # -- runc ----------------------------------------------------------------------------

    def _runc(self, *args: str, stdout: int | None = None, work: Path | None = None) -> None:
        self.state.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            proc = subprocess.run(["runc", "--root", str(self.state), *args],
                                  stdin=subprocess.DEVNULL, stdout=stdout or subprocess.PIPE,
                                  stderr=stdout or subprocess.PIPE, env=self.env,
                                  timeout=_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise RuntimeFailed(f"runc {args[0]} failed: {e}") from None
        if proc.returncode == 0:
            return
        err = (proc.stderr or b"").decode(errors="replace").strip()
        for name in ("dump.log", "restore.log"):
            log = work / name if work else None
            if log is not None and log.is_file():
                err += "\n" + log.read_text(errors="replace")[-1500:]
        raise RuntimeFailed(f"runc {args[0]} failed: {err or f'exit status {proc.returncode}'}")

    def _start(self, c: RealContainer, *args: str, work: Path | None = None) -> None:
        """`runc run -d` or `runc restore -d` with the container's log pipe as stdio."""
        read, write = os.pipe()
        try:
            self._runc(*args, stdout=write, work=work)
        except RuntimeFailed as e:
            os.close(write)
            # runc's own words went to the pipe, the container's stdio: what is there now.
            os.set_blocking(read, False)
            with os.fdopen(read, "rb") as f:
                said = (f.read(4096) or b"").decode(errors="replace").strip()
            raise RuntimeFailed(f"{e}{': ' + said if said else ''}") from None
        except BaseException:
            os.close(write)
            os.close(read)
            raise
        os.close(write)
        c.log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        c.pump = threading.Thread(target=self._pump, args=(read, c.log), daemon=True,
                                  name=f"log-{self.node}-{c.name}")
        c.pump.start()

    @staticmethod
    def _pump(read: int, log: Path) -> None:
        # conmon's job: the pipe's end is the container's end (all writers gone).
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while chunk := os.read(read, _CHUNK):
                os.write(fd, chunk)
        finally:
            os.close(fd)
            os.close(read)

    # -- run, checkpoint, restore, remove ------------------------------------------------

    def _new(self, pod: Obj, container: Obj, image: PulledImage) -> RealContainer:
        cid = container_id(pod, str(container["name"]))
        meta = pod["metadata"]
        bundle = self.bundles / cid
        if bundle.exists():
            shutil.rmtree(bundle)
        (bundle / "rootfs").mkdir(parents=True, mode=0o700)
        for layer in image.layers:
            if layer.path is None:
                raise CreateError("CreateContainerError", f"real containers need the layers "
                                  f"of {image.image}: it is not from a registry on 127.0.0.1")
            try:
                _unpack_layer(layer.path, bundle / "rootfs")
            except (OSError, tarfile.TarError) as e:
                raise CreateError("CreateContainerError",
                                  f"unpacking a layer of {image.image}: {e}") from None
        log = self.pod_logs / f"{meta['namespace']}_{meta['name']}_{meta['uid']}" / \
            str(container["name"]) / "0.log"
        return RealContainer(cid, pod, str(container["name"]), image.image, image.image_id,
                             dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                             bundle, log, _files(bundle / "rootfs"))

    def _volumes(self, pod: Obj, container: Obj) -> list[dict[str, Any]]:
        """Bind mounts of the container's emptyDir volumes (made here, empty)."""
        kinds = {v.get("name"): v for v in pod["spec"].get("volumes") or []}
        out = []
        for m in container.get("volumeMounts") or []:
            if "emptyDir" not in (kinds.get(m.get("name")) or {}) or m.get("subPath"):
                continue
            source = self.root / "var/lib/kubelet/pods" / pod["metadata"]["uid"] / \
                "volumes" / _EMPTY_DIR / str(m["name"])
            source.mkdir(parents=True, exist_ok=True)
            source.chmod(0o777)  # what the kubelet gives an emptyDir
            options = ["rbind", "ro" if m.get("readOnly") else "rw"]
            out.append({"destination": str(m["mountPath"]), "type": "bind",
                        "source": str(source), "options": options})
        return out

    def run(self, pod: Obj, container: Obj, image: PulledImage,
            annotations: dict[str, str]) -> RealContainer:
        """Create and start the container (CreateError RunContainerError if runc fails).
        annotations: CRI-O's, for config.json (and so spec.dump)."""
        c = self._new(pod, container, image)
        try:
            self._runc("spec", "--bundle", str(c.bundle))
        except RuntimeFailed as e:
            raise CreateError("CreateContainerError", str(e)) from None
        spec = json.loads((c.bundle / "config.json").read_text())
        config = image.container_config
        argv = list(container.get("command") or config.get("Entrypoint") or []) + \
            list(container.get("args") or ([] if container.get("command")
                                           else config.get("Cmd") or []))
        env = [str(e) for e in config.get("Env") or []] + \
            [f"{e['name']}={e['value']}" for e in container.get("env") or []
             if isinstance(e.get("value"), str)]
        spec["process"].update(terminal=False, args=argv, env=env,
                               cwd=str(container.get("workingDir") or config.get("WorkingDir")
                                       or "/"))
        spec["root"] = {"path": "rootfs", "readonly": False}
        spec["hostname"] = pod["metadata"]["name"]
        spec["mounts"] += self._volumes(pod, container)
        spec["annotations"] = annotations
        (c.bundle / "config.json").write_text(json.dumps(spec, indent=2))
        self._launch(c, "run", "--detach", "--bundle", str(c.bundle), c.id)
        return c

    def _launch(self, c: RealContainer, *args: str, work: Path | None = None) -> None:
        try:
            self._start(c, *args, work=work)
        except RuntimeFailed as e:
            shutil.rmtree(c.bundle, ignore_errors=True)
            raise CreateError("RunContainerError", str(e)) from None
        with self._lock:
            self._containers[c.id] = c
        self._log(f"runc-{self.node}: {c.id[:12]} {args[0]} ({c.pod['metadata']['name']}/"
                  f"{c.name})")

    def checkpoint(self, c: RealContainer, out: Path, config: dict[str, Any],
                   annotations: dict[str, str]) -> Path:
        """`runc checkpoint --leave-running` into a CRI-O archive at `out`; `config`:
        config.dump's fields besides the container's (name, times); `annotations`:
        spec.dump's besides those of its creation (the pod IP)."""
        scratch = out.parent / f".{out.name}.d"
        shutil.rmtree(scratch, ignore_errors=True)
        (scratch / "images").mkdir(parents=True, mode=0o700)
        (scratch / "work").mkdir(mode=0o700)
        try:
            self._runc("checkpoint", "--image-path", str(scratch / "images"), "--work-path",
                       str(scratch / "work"), "--leave-running", c.id, work=scratch / "work")
            diff, deleted = _rootfs_diff(c)
            spec = json.loads((c.bundle / "config.json").read_text())
            spec["annotations"] = {**spec.get("annotations", {}), **annotations}
            config = {"id": c.id, "rootfsImage": c.image_id, "rootfsImageRef": c.image_id,
                      "rootfsImageName": c.image, "runtime": "runc", "createdTime": c.created,
                      **config}
            c.log.touch(mode=0o600)
            return pack(out, scratch, config=config, spec=spec, rootfs_diff=diff,
                        deleted=deleted, log=c.log)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def restore(self, pod: Obj, container: Obj, image: PulledImage, base: PulledImage,
                checkpoint: Checkpoint, annotations: dict[str, str]) -> RealContainer:
        """StartContainer of a checkpoint image: `runc restore` (CreateError
        RunContainerError when it fails)."""
        c = self._new(pod, container, base)
        images = c.bundle.parent / f"{c.id}.checkpoint"
        shutil.rmtree(images, ignore_errors=True)
        images.mkdir(mode=0o700)
        try:
            try:
                deleted = self._unpack_checkpoint(image, c.rootfs, images)
            except (OSError, ValueError, tarfile.TarError) as e:
                raise CreateError("RunContainerError", f"failed to restore container "
                                  f"{container['name']}: {e}") from None
            for path in deleted:  # RemoveAll: `podman diff` lists a deleted tree once
                name = _safe_name(path)
                target = c.rootfs / name if name is not None else None
                if target is not None and target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                elif target is not None:
                    with contextlib.suppress(FileNotFoundError):
                        target.unlink()
            spec = json.loads(json.dumps(checkpoint.spec))
            spec["root"] = {"path": "rootfs", "readonly": False}
            binds = {m["destination"]: m for m in self._volumes(pod, container)}
            spec["mounts"] = [binds.get(m.get("destination"), m) if m.get("type") == "bind"
                              else m for m in spec.get("mounts") or []
                              if m.get("type") != "bind" or m.get("destination") in binds]
            spec["annotations"] = annotations
            (c.bundle / "config.json").write_text(json.dumps(spec, indent=2))
            work = c.bundle.parent / f"{c.id}.work"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(mode=0o700)
            self._launch(c, "restore", "--detach", "--image-path", str(images), "--work-path",
                         str(work), "--bundle", str(c.bundle), c.id, work=work)
        finally:
            shutil.rmtree(images, ignore_errors=True)
        return c

    @staticmethod
    def _unpack_checkpoint(image: PulledImage, rootfs: Path, images: Path) -> list[str]:
        """checkpoint/* into `images`, rootfs-diff.tar over `rootfs`; deleted.files."""
        deleted: list[str] = []
        for layer in image.layers:
            if layer.path is None:
                continue
            with tarfile.open(layer.path) as tf:
                for m in tf.getmembers():
                    name = _safe_name(m.name)
                    if name is None or not m.isreg():
                        continue
                    head, _, base = name.rpartition("/")
                    data = tf.extractfile(m)
                    assert data is not None
                    if head == "checkpoint" and base:
                        with open(images / base, "wb") as f:
                            shutil.copyfileobj(data, f)
                    elif name == "rootfs-diff.tar":
                        with tarfile.open(fileobj=io.BytesIO(data.read())) as diff:
                            diff.extractall(rootfs, filter="tar")
                    elif name == "deleted.files":
                        found = json.loads(data.read() or b"[]")
                        deleted = [str(p) for p in found] if isinstance(found, list) else []
        return deleted

    def remove(self, c: RealContainer) -> None:
        """Kill the container and remove it, its bundle and its runc state."""
        with self._lock:
            self._containers.pop(c.id, None)
        self._log(f"runc-{self.node}: {c.id[:12]} removed ({c.pod['metadata']['name']}/"
                  f"{c.name})")
        try:
            self._runc("delete", "--force", c.id)
        except RuntimeFailed as e:
            self._log(f"runc-{self.node}: {e}")
        shutil.rmtree(c.bundle, ignore_errors=True)
        if c.pump is not None:
            c.pump.join(timeout=5)

    def remove_pod(self, uid: str) -> None:
        """Remove the containers of pod `uid`."""
        for c in self._all():
            if c.pod["metadata"]["uid"] == uid:
                self.remove(c)

    def retain(self, uids: Iterable[str]) -> None:
        """Remove the containers of every pod not in `uids`."""
        keep = set(uids)
        for c in self._all():
            if c.pod["metadata"]["uid"] not in keep:
                self.remove(c)

    def _all(self) -> list[RealContainer]:
        with self._lock:
            return list(self._containers.values())

    def close(self) -> None:
        """Remove every container (the node stops)."""
        self.retain(())
