"""Rebuild the source pod from a checkpoint archive, for a pod that is gone.

Only what the archive records honestly comes back (README, "What an archive
can rebuild"):

- the pod's name, namespace and uid, and the container's name (spec.dump's
  annotations); labels and annotations the runtime recorded on the container,
  without the kubelet's own ``io.kubernetes.*`` keys and without the AppArmor
  and seccomp annotations (the securityContext below says what the source had);
- ports, terminationMessagePath/Policy and the grace period (the kubelet's
  container annotations); CPU and memory limits (spec.dump's cgroup settings);
  the user, no_new_privileges, a read-only root, the capabilities, the seccomp
  profile and the AppArmor profile (spec.dump's process and linux sections, and
  the profile name CRI-O records) — never more than the source had;
- volumes, from the bind mounts: an emptyDir comes back as it was, and a
  hostPath too (CRI-O refuses a restore without it), with a warning to review
  it; a configMap, secret, projected, downwardAPI, persistent volume or
  subPath mount cannot (the archive holds the kubelet's path, not the object's
  name), so an emptyDir stands in for it — the manifest still passes CRI-O's
  bind-mount check, the annotation ``migrate.dev/placeholder-volumes`` lists
  them, and a warning says to replace them.

The archive is untrusted: every field read is type-checked, and every value
that lands in the Pod is checked against Kubernetes' rules for its field. A
malformed one is an `ArchiveError` (exit 3) naming the member and the field;
labels and annotations, merely copied, are dropped with a warning instead.

Environment values are not copied: the restored processes keep theirs (they
are in the checkpointed memory), and values that came from secrets would land
in the manifest as plain text.
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import logging
import posixpath
import re
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from migrate.adapters import jsondoc
from migrate.adapters.checkpoint import CRIO_ANNOTATIONS, SPEC_DUMP, Checkpoint
from migrate.errors import ArchiveError
from migrate.pipeline.annotations import image_name
from migrate.pipeline.binds import (
    RecordedMount,
    host_path_type,
    required_mounts,
    termination_path,
)
from migrate.pipeline.manifest import ANNOTATION_PREFIX, PodSource

log = logging.getLogger(__name__)

PLACEHOLDER_VOLUMES = ANNOTATION_PREFIX + "placeholder-volumes"
SERVICE_ACCOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
#: The seccomp profile CRI-O ran the container with (internal/annotations): RuntimeDefault,
#: Unconfined, the profile's file, or "" (none, or one from an OCI artifact).
SECCOMP_PROFILE = "io.kubernetes.cri-o.SeccompProfilePath"
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"
_SECURITY_ANNOTATIONS = (APPARMOR_ANNOTATION, "seccomp.security.alpha.kubernetes.io/")
_KUBELET_PREFIXES = ("io.kubernetes.", "kubernetes.io/config.")
_KUBELET_PODS = "/var/lib/kubelet/pods"
_KUBELET_SECCOMP = "/var/lib/kubelet/seccomp/"  # the kubelet's root for Localhost profiles
_PLUGINS = {"kubernetes.io~empty-dir": "emptyDir", "kubernetes.io~configmap": "configMap",
            "kubernetes.io~secret": "secret", "kubernetes.io~projected": "projected",
            "kubernetes.io~downward-api": "downwardAPI", "kubernetes.io~csi": "CSI volume",
            "kubernetes.io~nfs": "nfs"}
_HINT = "the archive's metadata is damaged or was edited; take a new checkpoint"
_INT64 = (-(2**63), 2**63 - 1)
_UINT64 = (0, 2**64 - 1)
_ID_MAX = 2**31 - 1  # Kubernetes' user and group ids: 0 to MaxInt32
_ANNOTATIONS_MAX = 256 * 1024  # Kubernetes' limit on a Pod's annotations, keys and values
_NOT_NAME = re.compile(r"[^a-z0-9]+")
# Kubernetes' syntax rules (apimachinery's validation), used with fullmatch: ``$`` would
# let a trailing newline through.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"(?=.{1,253}\Z)[a-z0-9]([-a-z0-9]*[a-z0-9])?"
                            r"(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NAME_PART = re.compile(r"(?=.{1,63}\Z)[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"(?=.{0,63}\Z)([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_PORT_NAME = re.compile(r"(?=.{1,15}\Z)(?=.*[a-z])(?!.*--)[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_POD_UID = re.compile(r"[A-Za-z0-9][-A-Za-z0-9_.]*")  # one path component under pods/
_GRACE = re.compile(r"[0-9]+")  # ASCII digits: str.isdigit() also takes "²"
_CAPABILITY = re.compile(r"CAP_([A-Z0-9_]+)")
_APPARMOR_NAME = re.compile(r"[^\s\x00-\x1f\x7f]{1,4095}")
# Runtimes' own default AppArmor profiles (CRI-O's, older CRI-O's versioned one,
# containerd's, Podman's): what the source got by asking for RuntimeDefault.
_APPARMOR_DEFAULT = re.compile(r"crio-default(-[0-9][0-9.]*)?|cri-containerd\.apparmor\.d|"
                               r"containers-default-[0-9][0-9.]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PROTOCOLS = ("TCP", "UDP", "SCTP")
_MESSAGE_POLICIES = ("File", "FallbackToLogsOnError")


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "an array", str: "a string", int: "an integer",
            float: "a number"}.get(type(value), type(value).__name__)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:196] + "...'"


def _normal_path(path: str) -> bool:
    """An absolute path in its normal form: no ``..``, ``.``, ``//`` or control characters."""
    return (path.startswith("/") and not path.startswith("//")
            and posixpath.normpath(path) == path and not _CONTROL.search(path))


def _qualified_name(key: str) -> bool:
    """A label or annotation key: ``[prefix/]name``, the prefix a DNS subdomain."""
    prefix, slash, name = key.rpartition("/")
    return (_NAME_PART.fullmatch(name) is not None
            and (not slash or _DNS_SUBDOMAIN.fullmatch(prefix) is not None))


class _Fields:
    """Reads of spec.dump that check what they read: a field of the wrong type, or a value
    Kubernetes would refuse, is the archive's fault (exit 3) — not a crash, not a Pod
    the API server refuses later."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.warnings: list[tuple[str, tuple[object, ...]]] = []

    def warn(self, message: str, *args: object) -> None:
        """Said once the whole Pod is rebuilt: a refused archive prints its error alone."""
        self.warnings.append((message, args))

    def fail(self, where: str, problem: str) -> NoReturn:
        raise ArchiveError(self.label, f"{where}: {problem}", hint=_HINT, member=SPEC_DUMP)

    def invalid(self, where: str, value: object, what: str) -> NoReturn:
        self.fail(where, f"{_shown(value)} is not {what}")

    def _typed(self, data: Mapping[str, Any], key: str, where: str, kind: type,
               name: str) -> Any:
        value = data.get(key)
        if value is not None and (not isinstance(value, kind)
                                  or (kind is int and isinstance(value, bool))):
            self.fail(f"{where}.{key}", f"expected {name}, found {_kind(value)}")
        return value

    def maybe_obj(self, data: Mapping[str, Any], key: str, where: str) -> dict[str, Any] | None:
        value: dict[str, Any] | None = self._typed(data, key, where, dict, "an object")
        return value

    def obj(self, data: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
        return self.maybe_obj(data, key, where) or {}

    def text(self, data: Mapping[str, Any], key: str, where: str) -> str | None:
        value: str | None = self._typed(data, key, where, str, "a string")
        return value

    def flag(self, data: Mapping[str, Any], key: str, where: str) -> bool:
        return self._typed(data, key, where, bool, "a boolean") is True

    def integer(self, data: Mapping[str, Any], key: str, where: str,
                bounds: tuple[int, int]) -> int | None:
        value: int | None = self._typed(data, key, where, int, "an integer")
        if value is not None and not bounds[0] <= value <= bounds[1]:
            self.fail(f"{where}.{key}", f"{value} is out of range ({bounds[0]} to {bounds[1]})")
        return value

    def texts(self, data: Mapping[str, Any], key: str, where: str) -> list[str]:
        value: list[Any] = self._typed(data, key, where, list, "an array") or []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.fail(f"{where}.{key}[{i}]", f"expected a string, found {_kind(item)}")
        return value


def _label_name(text: str, taken: set[str]) -> str:
    """``text`` if it is a DNS label, else one made from it; unique among ``taken``."""
    base = text if _DNS_LABEL.fullmatch(text) else (
        _NOT_NAME.sub("-", text.lower()).strip("-")[:63].strip("-") or "volume")
    name, n = base, 2
    while name in taken:
        name, n = f"{base[:58].rstrip('-')}-{n}", n + 1
    return name


def _copied(r: _Fields, data: Mapping[str, Any], what: str, valid_key: Callable[[str], object],
            valid_value: Callable[[str], object]) -> dict[str, str]:
    """A runtime-recorded map without the kubelet's own keys, the security annotations
    (the securityContext says what the source had: an annotation would override it) and
    the entries Kubernetes would refuse, each dropped with a warning."""
    out: dict[str, str] = {}
    for k, v in data.items():
        if k.startswith(_KUBELET_PREFIXES):
            continue
        if what == "annotation" and k.startswith(_SECURITY_ANNOTATIONS):
            r.warn("%s %s from the archive dropped: the container's securityContext "
                   "carries the source's confinement", what, _shown(k))
        elif not valid_key(k):
            r.warn("%s %s from the archive dropped: not a valid %s key", what, _shown(k), what)
        elif not isinstance(v, str) or not valid_value(v):
            r.warn("%s %s from the archive dropped: %s is not a valid %s value", what,
                   _shown(k), _shown(v), what)
        else:
            out[k] = v
    return out


def _annotations(r: _Fields, recorded: Mapping[str, Any]) -> dict[str, str]:
    out = _copied(r, recorded, "annotation", lambda k: _qualified_name(k.lower()), lambda v: True)
    size = sum(len(k.encode()) + len(v.encode()) for k, v in out.items())
    if size > _ANNOTATIONS_MAX:
        r.fail(f"annotation {CRIO_ANNOTATIONS}",
               f"the container's annotations take {size} bytes, more than the "
               f"{_ANNOTATIONS_MAX} Kubernetes allows a Pod")
    return out


class _Volumes:
    """Pod volumes and volumeMounts rebuilt from the recorded mounts."""

    def __init__(self, fields: _Fields, pod_dir: str) -> None:
        self.fields = fields
        self.pod_dir = pod_dir
        self.volumes: dict[str, dict[str, Any]] = {}
        self.mounts: list[dict[str, Any]] = []
        self.placeholders: list[str] = []

    def add(self, m: RecordedMount) -> None:
        where = f"mount at {_shown(m.destination)}"
        if not _normal_path(m.destination):
            self.fields.invalid(where, m.destination, "an absolute, normalised container path")
        if not _normal_path(m.source):
            # A proc, tmpfs... mount ("source": "proc") or an edited path: no volume can
            # provide it, and a relative hostPath would be resolved who knows where.
            self.fields.invalid(where, m.source, "an absolute, normalised source path "
                                "(no Pod volume can provide it)")
        name, source, original = self._source(m, where)
        if name not in self.volumes:
            self.volumes[name] = {"name": name, **source}
            if original:
                self.placeholders.append(name)
                self.fields.warn(
                    "volume %r (%s at %s) cannot be rebuilt from the archive: an emptyDir "
                    "stands in for it%s; replace it in the manifest, or render from the live "
                    "pod (--from-pod)", name, original, m.destination,
                    " and cannot be bound onto a file" if m.kind == "file" else "")
        if "hostPath" in self.volumes[name]:
            # A hostPath gives the container the node's files: faithful (CRI-O refuses a
            # restore without the mount), but an archive is untrusted and can name any path.
            self.fields.warn("volume %r is the node's %s, mounted %s at %s as the archive "
                             "records it: review before applying", name, m.source,
                             "read-only" if m.readonly else "writable", m.destination)
        mount: dict[str, Any] = {"name": name, "mountPath": m.destination}
        if m.readonly:
            mount["readOnly"] = True
        self.mounts.append(mount)

    def _source(self, m: RecordedMount, where: str) -> tuple[str, dict[str, Any], str | None]:
        """(volume name, volume source, what it was when only a placeholder stands in)."""
        taken = set(self.volumes)
        inside = m.source.startswith(self.pod_dir + "/") if self.pod_dir else False
        if not inside:
            if m.source == _KUBELET_PODS or m.source.startswith(_KUBELET_PODS + "/"):
                # Another pod's volumes (its secrets, its tokens): the source pod had no
                # business mounting them, and the restored one gets none.
                self.fields.invalid(where, m.source, "in this pod's own directory: another "
                                    "pod's kubelet files cannot come back as a hostPath")
            kind = host_path_type(m)
            host_path = {"path": m.source, **({"type": kind} if kind else {})}
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


def _resources(r: _Fields, spec: dict[str, Any]) -> dict[str, Any]:
    res = r.obj(r.obj(spec, "linux", "$"), "resources", "$.linux")
    memory = r.obj(res, "memory", "$.linux.resources")
    cpu = r.obj(res, "cpu", "$.linux.resources")
    limit = r.integer(memory, "limit", "$.linux.resources.memory", _INT64)
    quota = r.integer(cpu, "quota", "$.linux.resources.cpu", _INT64)
    period = r.integer(cpu, "period", "$.linux.resources.cpu", _UINT64)
    shares = r.integer(cpu, "shares", "$.linux.resources.cpu", _UINT64)
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if limit is not None and limit > 0:
        limits["memory"] = str(limit)
    if quota is not None and period is not None and quota > 0 and period > 0:
        limits["cpu"] = f"{max(1, quota * 1000 // period)}m"
    if shares is not None and shares > 2:  # 2 is the kubelet's "no request"
        # The kubelet made shares = millicores * 1024 // 1000 (kuberuntime's
        # milliCPUToShares): rounded up, the inverse gives the request back exactly
        # (100m: 102 shares, 99.6 -> 100m; rounded down it said 99m).
        requests["cpu"] = f"{-(-shares * 1000 // 1024)}m"
    return {k: v for k, v in (("limits", limits), ("requests", requests)) if v}


def _capabilities(r: _Fields, process: dict[str, Any]) -> dict[str, list[str]]:
    """Exactly the source's bounding set: ALL dropped, then each added back. Without
    ``drop: [ALL]`` the runtime's default set would come back, whatever the source had
    (none recorded: none given)."""
    where = "$.process.capabilities"
    bounding = r.texts(r.obj(process, "capabilities", "$.process"), "bounding", where)
    added: list[str] = []
    for i, cap in enumerate(bounding):
        m = _CAPABILITY.fullmatch(cap)
        if m is None:
            r.invalid(f"{where}.bounding[{i}]", cap, "a capability name (CAP_...)")
        if m[1] not in added:
            added.append(m[1])
    return {"drop": ["ALL"], **({"add": added} if added else {})}


def _seccomp(r: _Fields, spec: dict[str, Any], annotations: Mapping[str, str]
             ) -> dict[str, str] | None:
    """The source's profile by the name CRI-O recorded for it; the filter itself (in
    spec.dump) is not something a Pod can give. None for Unconfined: a Pod that names
    none runs unconfined on a kubelet without --seccomp-default, as the source did (and
    PodSecurity's baseline refuses an explicit Unconfined, which the source's pod
    need not have said)."""
    has_filter = r.maybe_obj(r.obj(spec, "linux", "$"), "seccomp", "$.linux") is not None
    name = annotations.get(SECCOMP_PROFILE)
    where = f"annotation {SECCOMP_PROFILE}"
    # Older kubelets and CRI-O wrote runtime/default, docker/default, unconfined and
    # localhost/<file>; since the CRI's SecurityProfile, RuntimeDefault, Unconfined, <file>.
    if name in ("RuntimeDefault", "runtime/default", "docker/default"):
        return {"type": "RuntimeDefault"}
    if name and name.startswith(("/", "localhost/")):
        path = name.removeprefix("localhost/")
        profile = path.removeprefix(_KUBELET_SECCOMP)
        if not _normal_path(path) or profile == path or not profile:
            r.invalid(where, name, f"a seccomp profile under {_KUBELET_SECCOMP} (a Pod can "
                      "name no other)")
        return {"type": "Localhost", "localhostProfile": profile}
    if name not in (None, "", "Unconfined", "unconfined"):
        r.invalid(where, name, "a seccomp profile CRI-O records (RuntimeDefault, Unconfined "
                  "or a profile's file)")
    if has_filter:
        # CRI-O records no name for a profile from an OCI artifact; a Pod cannot give
        # that filter, the runtime's default is the closest it can ask for.
        r.warn("the source ran under a seccomp filter CRI-O records no profile name for "
               "(one from an OCI artifact?): RuntimeDefault stands in; review before applying")
        return {"type": "RuntimeDefault"}
    return None  # no filter at all: what the source had


def _apparmor(r: _Fields, process: dict[str, Any]) -> dict[str, str] | None:
    """The source's profile; none recorded (AppArmor off on its node): the runtime's
    default, which confines at least as much."""
    name = r.text(process, "apparmorProfile", "$.process")
    if not name:
        return None
    if name == "unconfined":
        return {"type": "Unconfined"}
    if _APPARMOR_DEFAULT.fullmatch(name):
        return {"type": "RuntimeDefault"}
    if not _APPARMOR_NAME.fullmatch(name):
        r.invalid("$.process.apparmorProfile", name, "an AppArmor profile name")
    return {"type": "Localhost", "localhostProfile": name}


def _security_context(r: _Fields, spec: dict[str, Any], annotations: Mapping[str, str]
                      ) -> dict[str, Any]:
    process = r.obj(spec, "process", "$")
    user = r.obj(process, "user", "$.process")
    uid = r.integer(user, "uid", "$.process.user", (0, _ID_MAX))
    gid = r.integer(user, "gid", "$.process.user", (0, _ID_MAX))
    out: dict[str, Any] = {}
    if uid:
        out["runAsUser"] = uid
        if gid is not None:
            out["runAsGroup"] = gid
    if r.flag(process, "noNewPrivileges", "$.process"):
        out["allowPrivilegeEscalation"] = False
    if r.flag(r.obj(spec, "root", "$"), "readonly", "$.root"):
        out["readOnlyRootFilesystem"] = True
    out["capabilities"] = _capabilities(r, process)
    seccomp = _seccomp(r, spec, annotations)
    if seccomp:
        out["seccompProfile"] = seccomp
    apparmor = _apparmor(r, process)
    if apparmor:
        out["appArmorProfile"] = apparmor
    return out


def _ports(r: _Fields, recorded: dict[str, Any], max_depth: int) -> list[dict[str, Any]]:
    key = "io.kubernetes.container.ports"
    where = f"{CRIO_ANNOTATIONS}: {key}"
    raw = recorded.get(key)
    if raw is None:
        return []
    if not isinstance(raw, str):
        r.fail(where, f"expected a string, found {_kind(raw)}")
    try:
        ports = jsondoc.loads(raw, max_depth)
    except jsondoc.JsonError as e:
        r.fail(where, str(e))
    if not isinstance(ports, list):
        r.fail(where, f"expected an array, found {_kind(ports)}")
    out: list[dict[str, Any]] = []
    names: set[str] = set()
    for i, p in enumerate(ports):
        at = f"{where}[{i}]"
        if not isinstance(p, dict):
            r.fail(at, f"expected an object, found {_kind(p)}")
        port: dict[str, Any] = {}
        name = r.text(p, "name", at)
        if name is not None:
            if not _PORT_NAME.fullmatch(name) or name in names:
                r.invalid(f"{at}.name", name, "a port name (an IANA service name, at most "
                          "15 characters, unique)")
            names.add(name)
            port["name"] = name
        container_port = r.integer(p, "containerPort", at, (1, 65535))
        if container_port is None:
            r.fail(f"{at}.containerPort", "missing")
        port["containerPort"] = container_port
        protocol = r.text(p, "protocol", at)
        if protocol is not None:
            if protocol not in _PROTOCOLS:
                r.invalid(f"{at}.protocol", protocol, "TCP, UDP or SCTP")
            port["protocol"] = protocol
        host_port = r.integer(p, "hostPort", at, (0, 65535))
        host_ip = r.text(p, "hostIP", at)
        if host_ip:
            try:
                ipaddress.ip_address(host_ip)
            except ValueError:
                r.invalid(f"{at}.hostIP", host_ip, "an IP address")
        if host_port:  # 0 is Kubernetes' "none"
            port["hostPort"] = host_port
            if host_ip:
                port["hostIP"] = host_ip
            # Faithful (the source had it), but it binds a port on the node itself.
            r.warn("port %d/%s takes the node's port %d%s as the archive records it: "
                   "review before applying", container_port, protocol or "TCP", host_port,
                   f" on {host_ip}" if host_ip else "")
        out.append(port)
    return out


def _recorded_text(r: _Fields, recorded: dict[str, Any], key: str) -> str | None:
    value = recorded.get(key)
    if value is not None and not isinstance(value, str):
        r.fail(f"{CRIO_ANNOTATIONS}: {key}", f"expected a string, found {_kind(value)}")
    return value or None


def _termination(r: _Fields, recorded: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    key = "io.kubernetes.container.terminationMessagePath"
    path = _recorded_text(r, recorded, key)
    if path is not None:
        if not _normal_path(path) or len(path) > 4096:
            r.invalid(f"{CRIO_ANNOTATIONS}: {key}", path, "an absolute, normalised path")
        out["terminationMessagePath"] = path
    key = "io.kubernetes.container.terminationMessagePolicy"
    policy = _recorded_text(r, recorded, key)
    if policy is not None:
        if policy not in _MESSAGE_POLICIES:
            r.invalid(f"{CRIO_ANNOTATIONS}: {key}", policy, "File or FallbackToLogsOnError")
        out["terminationMessagePolicy"] = policy
    return out


def _grace(r: _Fields, recorded: dict[str, Any]) -> int | None:
    key = "io.kubernetes.pod.terminationGracePeriod"
    grace = _recorded_text(r, recorded, key)
    if grace is None:
        return None
    if not _GRACE.fullmatch(grace) or int(grace) > _INT64[1]:
        r.invalid(f"{CRIO_ANNOTATIONS}: {key}", grace, "a number of seconds (0 to 2^63-1)")
    return int(grace)


def _container(r: _Fields, ckpt: Checkpoint, name: str, recorded: dict[str, Any],
               mounts: list[dict[str, Any]]) -> dict[str, Any]:
    spec = ckpt.spec
    image = image_name(ckpt) or "unknown"
    c: dict[str, Any] = {"name": name, "image": image}
    optional = {
        "ports": _ports(r, recorded, ckpt.archive.settings.max_json_depth),
        "resources": _resources(r, spec),
        "securityContext": _security_context(r, spec, ckpt.annotations),
        **_termination(r, recorded),
        "volumeMounts": mounts,
    }
    c.update({k: v for k, v in optional.items() if v})
    return c


def _identity(r: _Fields, ckpt: Checkpoint) -> tuple[str, str, str, str]:
    """(container, pod, namespace, pod uid), each checked against Kubernetes' rules."""
    who = ckpt.identity()
    container, pod, namespace, uid = who.container, who.pod, who.namespace, who.pod_uid
    if not container:
        raise ArchiveError(ckpt.label, "names no container",
                           hint="a restore needs the container's name", member=SPEC_DUMP)
    checks = (
        (container, "container name", _DNS_LABEL, "a DNS-1123 label: at most 63 lower-case "
         "letters, digits and '-'"),
        (pod, "annotation io.kubernetes.pod.name", _DNS_SUBDOMAIN, "a pod name (a DNS-1123 "
         "subdomain: at most 253 lower-case letters, digits, '-' and '.')"),
        (namespace, "annotation io.kubernetes.pod.namespace", _DNS_LABEL, "a namespace (a "
         "DNS-1123 label: at most 63 lower-case letters, digits and '-')"),
        (uid, "annotation io.kubernetes.pod.uid", _POD_UID, "a pod uid"),
    )
    for value, where, rule, what in checks:
        # The Metadata annotation's JSON could hold any type: checked here too.
        if value and not (isinstance(value, str) and rule.fullmatch(value)):
            r.invalid(where, value, what)
    return container, pod, namespace, uid


def _recorded_map(r: _Fields, ckpt: Checkpoint, key: str) -> dict[str, Any]:
    data = ckpt.annotation_json(key)
    if data is not None and not isinstance(data, dict):
        r.fail(f"annotation {key}", f"expected a JSON object, found {_kind(data)}")
    return data or {}


def pod_from_checkpoint(ckpt: Checkpoint) -> PodSource:
    """The source pod as far as the archive records it (see the module docstring)."""
    r = _Fields(ckpt.label)
    container, pod, namespace, uid = _identity(r, ckpt)
    recorded = _recorded_map(r, ckpt, CRIO_ANNOTATIONS)
    labels = _copied(r, _recorded_map(r, ckpt, "io.kubernetes.cri-o.Labels"), "label",
                     _qualified_name, _LABEL_VALUE.fullmatch)
    provided = {"/etc/hosts", termination_path(ckpt), SERVICE_ACCOUNT_PATH}  # kubelet, admission
    volumes = _Volumes(r, f"{_KUBELET_PODS}/{uid}" if uid else "")
    wanted = [m for m in required_mounts(ckpt) if m.destination not in provided]
    for m in wanted:
        volumes.add(m)
    spec: dict[str, Any] = {
        "containers": [_container(r, ckpt, container, recorded, volumes.mounts)]}
    hostname = r.text(ckpt.spec, "hostname", "$")
    if hostname and _DNS_LABEL.fullmatch(hostname):
        spec["hostname"] = hostname
    grace = _grace(r, recorded)
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    if volumes.volumes:
        spec["volumes"] = list(volumes.volumes.values())
    meta = {"name": pod or container, "namespace": namespace or "default",
            "uid": uid or None, "labels": labels, "annotations": _annotations(r, recorded)}
    notes = {PLACEHOLDER_VOLUMES: ",".join(volumes.placeholders)} if volumes.placeholders else {}
    for message, args in r.warnings:
        log.warning(message, *args)
    return PodSource({"metadata": {k: v for k, v in meta.items() if v}, "spec": spec},
                     checkpoint_time=ckpt.config.get("checkpointedTime") or None, notes=notes,
                     required_mounts=tuple(m.destination for m in wanted))


def _apparmor_annotation(profile: Mapping[str, str]) -> str:
    kind = profile.get("type")
    if kind == "Localhost":
        return f"localhost/{profile.get('localhostProfile', '')}"
    return "unconfined" if kind == "Unconfined" else "runtime/default"


def for_version(source: PodSource, version: str) -> PodSource:
    """``source`` as Kubernetes ``version`` takes it: before 1.30 a Pod has no
    ``appArmorProfile`` field, and its kubelet reads the profile from the beta annotation."""
    if tuple(int(p) for p in version.split(".")[:2]) >= (1, 30):
        return source
    pod = copy.deepcopy(dict(source.pod))
    meta = pod.setdefault("metadata", {})
    for c in (pod.get("spec") or {}).get("containers") or []:
        security = c.get("securityContext") or {}
        profile = security.pop("appArmorProfile", None)
        if profile:
            meta.setdefault("annotations", {})[APPARMOR_ANNOTATION + c["name"]] = (
                _apparmor_annotation(profile))
    return dataclasses.replace(source, pod=pod)
