"""Rebuild the source pod from a checkpoint archive, for a pod that is gone.

Only what the archive records honestly comes back (README, "What an archive
can rebuild"):

- the pod's name, namespace and uid, and the container's name (spec.dump's
  annotations); labels and annotations the runtime recorded on the container,
  without the kubelet's own ``io.kubernetes.*`` keys;
- ports, terminationMessagePath/Policy and the grace period (the kubelet's
  container annotations); CPU and memory limits (spec.dump's cgroup settings);
  the user, no_new_privileges and a read-only root (spec.dump's process);
- volumes, from the bind mounts: an emptyDir or a hostPath comes back as it
  was; a configMap, secret, projected, downwardAPI, persistent volume or
  subPath mount cannot (the archive holds the kubelet's path, not the object's
  name), so an emptyDir stands in for it — the manifest still passes CRI-O's
  bind-mount check, the annotation ``migrate.dev/placeholder-volumes`` lists
  them, and a warning says to replace them.

Environment values are not copied: the restored processes keep theirs (they
are in the checkpointed memory), and values that came from secrets would land
in the manifest as plain text.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from migrate.adapters import jsondoc
from migrate.adapters.checkpoint import CRIO_ANNOTATIONS, Checkpoint
from migrate.errors import ArchiveError
from migrate.pipeline.annotations import image_name
from migrate.pipeline.binds import RecordedMount, required_mounts, termination_path
from migrate.pipeline.manifest import ANNOTATION_PREFIX, PodSource

log = logging.getLogger(__name__)

PLACEHOLDER_VOLUMES = ANNOTATION_PREFIX + "placeholder-volumes"
SERVICE_ACCOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
_KUBELET_PREFIXES = ("io.kubernetes.", "kubernetes.io/config.")
_PLUGINS = {"kubernetes.io~empty-dir": "emptyDir", "kubernetes.io~configmap": "configMap",
            "kubernetes.io~secret": "secret", "kubernetes.io~projected": "projected",
            "kubernetes.io~downward-api": "downwardAPI", "kubernetes.io~csi": "CSI volume",
            "kubernetes.io~nfs": "nfs"}
_PORT_KEYS = ("name", "containerPort", "protocol", "hostPort", "hostIP")
_NOT_NAME = re.compile(r"[^a-z0-9]+")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _label_name(text: str, taken: set[str]) -> str:
    """``text`` if it is a DNS label, else one made from it; unique among ``taken``."""
    base = text if _DNS_LABEL.match(text) else (
        _NOT_NAME.sub("-", text.lower()).strip("-")[:63].strip("-") or "volume")
    name, n = base, 2
    while name in taken:
        name, n = f"{base[:58].rstrip('-')}-{n}", n + 1
    return name


def _own_keys(data: Any) -> dict[str, str]:
    """A runtime-recorded map without the kubelet's own keys."""
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items() if not str(k).startswith(_KUBELET_PREFIXES)}


class _Volumes:
    """Pod volumes and volumeMounts rebuilt from the recorded mounts."""

    def __init__(self, pod_dir: str) -> None:
        self.pod_dir = pod_dir
        self.volumes: dict[str, dict[str, Any]] = {}
        self.mounts: list[dict[str, Any]] = []
        self.placeholders: list[str] = []

    def add(self, m: RecordedMount) -> None:
        name, source, original = self._source(m)
        if name not in self.volumes:
            self.volumes[name] = {"name": name, **source}
            if original:
                self.placeholders.append(name)
                log.warning("volume %r (%s at %s) cannot be rebuilt from the archive: an "
                            "emptyDir stands in for it%s; replace it in the manifest, or render "
                            "from the live pod (--from-pod)", name, original, m.destination,
                            " and cannot be bound onto a file" if m.kind == "file" else "")
        mount: dict[str, Any] = {"name": name, "mountPath": m.destination}
        if m.readonly:
            mount["readOnly"] = True
        self.mounts.append(mount)

    def _source(self, m: RecordedMount) -> tuple[str, dict[str, Any], str | None]:
        """(volume name, volume source, what it was when only a placeholder stands in)."""
        taken = set(self.volumes)
        inside = m.source.startswith(self.pod_dir + "/") if self.pod_dir else False
        if not inside:
            # A directory must exist as one; a "file" may have been a socket or a device,
            # which the type File would refuse: left unchecked.
            host_path = {"path": m.source, **({"type": "Directory"} if m.kind == "directory"
                                              else {})}
            name = next((n for n, v in self.volumes.items()
                         if v.get("hostPath", {}).get("path") == m.source), None)
            return name or _label_name("host-" + m.source, taken), {"hostPath": host_path}, None
        parts = m.source[len(self.pod_dir) + 1:].split("/")
        if parts[0] == "volumes" and len(parts) >= 3:
            plugin = _PLUGINS.get(parts[1], parts[1])
            if parts[2] in taken:  # another mount of the same volume
                return parts[2], {}, None
            name = _label_name(parts[2], taken)
            return name, {"emptyDir": {}}, None if plugin == "emptyDir" else plugin
        if parts[0] == "volume-subpaths" and len(parts) >= 2:
            return _label_name(f"{parts[1]}-subpath", taken), {"emptyDir": {}}, "subPath mount"
        return _label_name(parts[-1], taken), {"emptyDir": {}}, "kubelet-managed mount"


def _resources(spec: dict[str, Any]) -> dict[str, Any]:
    r = (spec.get("linux") or {}).get("resources") or {}
    memory, cpu = r.get("memory") or {}, r.get("cpu") or {}
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if isinstance(memory.get("limit"), int) and memory["limit"] > 0:
        limits["memory"] = str(memory["limit"])
    quota, period, shares = cpu.get("quota"), cpu.get("period"), cpu.get("shares")
    if isinstance(quota, int) and isinstance(period, int) and quota > 0 and period > 0:
        limits["cpu"] = f"{max(1, quota * 1000 // period)}m"
    if isinstance(shares, int) and shares > 2:  # 2 is the kubelet's "no request"
        # The kubelet made shares = millicores * 1024 // 1000 (kuberuntime's
        # milliCPUToShares): rounded up, the inverse gives the request back exactly
        # (100m: 102 shares, 99.6 -> 100m; rounded down it said 99m).
        requests["cpu"] = f"{-(-shares * 1000 // 1024)}m"
    return {k: v for k, v in (("limits", limits), ("requests", requests)) if v}


def _security_context(spec: dict[str, Any]) -> dict[str, Any]:
    process, out = spec.get("process") or {}, {}
    user = process.get("user") or {}
    if isinstance(user.get("uid"), int) and user["uid"] > 0:
        out["runAsUser"] = user["uid"]
        if isinstance(user.get("gid"), int):
            out["runAsGroup"] = user["gid"]
    if process.get("noNewPrivileges") is True:
        out["allowPrivilegeEscalation"] = False
    if (spec.get("root") or {}).get("readonly") is True:
        out["readOnlyRootFilesystem"] = True
    return out


def _ports(recorded: dict[str, Any], max_depth: int) -> list[dict[str, Any]]:
    raw = recorded.get("io.kubernetes.container.ports", "[]")
    try:
        ports = jsondoc.loads(raw, max_depth) if isinstance(raw, str) else None
    except jsondoc.JsonError:
        return []
    return [{k: p[k] for k in _PORT_KEYS if k in p} for p in ports if isinstance(p, dict)
            and isinstance(p.get("containerPort"), int)] if isinstance(ports, list) else []


def _container(ckpt: Checkpoint, name: str, recorded: dict[str, Any],
               mounts: list[dict[str, Any]]) -> dict[str, Any]:
    spec = ckpt.spec
    image = image_name(ckpt) or "unknown"
    c: dict[str, Any] = {"name": name, "image": image}
    optional = {
        "ports": _ports(recorded, ckpt.archive.settings.max_json_depth),
        "resources": _resources(spec),
        "securityContext": _security_context(spec),
        "terminationMessagePath": recorded.get("io.kubernetes.container.terminationMessagePath"),
        "terminationMessagePolicy":
            recorded.get("io.kubernetes.container.terminationMessagePolicy"),
        "volumeMounts": mounts,
    }
    c.update({k: v for k, v in optional.items() if v})
    return c


def pod_from_checkpoint(ckpt: Checkpoint) -> PodSource:
    """The source pod as far as the archive records it (see the module docstring)."""
    who = ckpt.identity()
    if not who.container:
        raise ArchiveError(ckpt.label, "names no container",
                           hint="a restore needs the container's name", member="spec.dump")
    recorded = ckpt.annotation_json(CRIO_ANNOTATIONS)
    recorded = recorded if isinstance(recorded, dict) else {}
    provided = {"/etc/hosts", termination_path(ckpt), SERVICE_ACCOUNT_PATH}  # kubelet, admission
    volumes = _Volumes(f"/var/lib/kubelet/pods/{who.pod_uid}" if who.pod_uid else "")
    wanted = [m for m in required_mounts(ckpt) if m.destination not in provided]
    for m in wanted:
        volumes.add(m)
    spec: dict[str, Any] = {
        "containers": [_container(ckpt, who.container, recorded, volumes.mounts)]}
    hostname = ckpt.spec.get("hostname")
    if isinstance(hostname, str) and _DNS_LABEL.match(hostname):
        spec["hostname"] = hostname
    grace = recorded.get("io.kubernetes.pod.terminationGracePeriod", "")
    if str(grace).isdigit():
        spec["terminationGracePeriodSeconds"] = int(grace)
    if volumes.volumes:
        spec["volumes"] = list(volumes.volumes.values())
    meta = {"name": who.pod or who.container, "namespace": who.namespace or "default",
            "uid": who.pod_uid or None,
            "labels": _own_keys(ckpt.annotation_json("io.kubernetes.cri-o.Labels")),
            "annotations": _own_keys(recorded)}
    notes = {PLACEHOLDER_VOLUMES: ",".join(volumes.placeholders)} if volumes.placeholders else {}
    return PodSource({"metadata": {k: v for k, v in meta.items() if v}, "spec": spec},
                     checkpoint_time=ckpt.config.get("checkpointedTime") or None, notes=notes,
                     required_mounts=tuple(m.destination for m in wanted))
