"""`migrate manifest --archive` from a hostile spec.dump: the archive is untrusted.

What the Pod gets from the archive is checked: a field of the wrong type or a
value Kubernetes would refuse is exit 3 naming the member and the field (never
exit 1, never an invalid Pod with exit 0); labels and annotations, merely
copied, are dropped with a warning. The restored container gets the source's
confinement (capabilities, seccomp, AppArmor), never more; the archive's own
AppArmor/seccomp annotations cannot override it; a hostPath comes back (CRI-O
needs the mount) but is said on stderr, read-only when it was, and never
another pod's kubelet files.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.conftest import Result
from tests.test_untrusted_input import assert_clean_error, rewrite_member

Cli = Callable[..., Result]
Change = Callable[[dict[str, Any]], object]
INVALID_INPUT = 3
CRIO = "io.kubernetes.cri-o.Annotations"
SECCOMP = "io.kubernetes.cri-o.SeccompProfilePath"
POD_DIR = "/var/lib/kubelet/pods/6a2d1a4e-53a1-4f8b-9c1e-0d5e0f1b7a21"  # the counters pod's
FILTER = {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
          "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]}


def crio(spec: dict[str, Any], **entries: str) -> None:
    """Set entries of the kubelet's container annotations (a JSON string in spec.dump)."""
    recorded = json.loads(spec["annotations"].get(CRIO, "{}"))
    recorded.update(entries)
    spec["annotations"][CRIO] = json.dumps(recorded)


def annotate(spec: dict[str, Any], key: str, value: str) -> None:
    spec["annotations"][key] = value


def meta(spec: dict[str, Any], **fields: Any) -> None:
    """Set fields of the CRI-O metadata annotation (the container's name)."""
    spec["annotations"]["io.kubernetes.cri-o.Metadata"] = json.dumps(fields)


def mount(spec: dict[str, Any], destination: str, source: str, *options: str,
          kind: str = "bind") -> None:
    spec["mounts"].append({"destination": destination, "type": kind, "source": source,
                           "options": list(options)})


def setting(*path: str, value: Any) -> Change:
    """A change setting spec.dump's ``path`` (creating the objects on the way) to ``value``."""
    def change(spec: dict[str, Any]) -> None:
        node = spec
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return change


@pytest.fixture
def hostile(counters_archive: Path, tmp_path: Path) -> Callable[..., Path]:
    """``hostile(*changes, base=archive)``: a copy of ``base`` with spec.dump changed."""
    numbers = itertools.count()

    def make(*changes: Change, base: Path = counters_archive) -> Path:
        def rewrite(data: bytes) -> bytes:
            spec = json.loads(data)
            for change in changes:
                change(spec)
            return json.dumps(spec).encode()
        return rewrite_member(base, tmp_path / f"hostile-{next(numbers)}.tar", "spec.dump",
                              rewrite)

    return make


def manifest(cli: Cli, archive: Path, *args: str) -> Result:
    return cli("manifest", "--archive", archive, "--image", "r/x:1", "--node", "node-b",
               "-o", "json", *args)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The stderr ``WARNING: ...`` lines (in-process, pytest captures the log records)."""
    return [rec.getMessage() for rec in caplog.records if rec.levelname == "WARNING"]


def container_of(r: Result) -> dict[str, Any]:
    assert r.code == 0, r.err
    (container,) = r.json()["spec"]["containers"]
    return container  # type: ignore[no-any-return]


# -- 1. a field of the wrong type is bad input, not a crash --------------------------------

MALFORMED: dict[str, tuple[Change, str]] = {
    "grace-superscript-two": (  # "²".isdigit() is True; int("²") raises
        lambda s: crio(s, **{"io.kubernetes.pod.terminationGracePeriod": "\u00b2"}),
        f"{CRIO}: io.kubernetes.pod.terminationGracePeriod: '\u00b2' is not a number of "
        "seconds (0 to 2^63-1)"),
    "linux-array": (setting("linux", value=[1]), "$.linux: expected an object, found an array"),
    "resources-string": (setting("linux", "resources", value="x"),
                         "$.linux.resources: expected an object, found a string"),
    "memory-string": (setting("linux", "resources", "memory", value="x"),
                      "$.linux.resources.memory: expected an object, found a string"),
    "cpu-quota-float": (setting("linux", "resources", "cpu", value={"quota": 1.5,
                                                                     "period": 100000}),
                        "$.linux.resources.cpu.quota: expected an integer, found a number"),
    "user-string": (setting("process", "user", value="x"),
                    "$.process.user: expected an object, found a string"),
    "root-string": (setting("root", value="x"), "$.root: expected an object, found a string"),
    "uid-boolean": (setting("process", "user", value={"uid": True, "gid": 0}),
                    "$.process.user.uid: expected an integer, found a boolean"),
    "no-new-privileges-string": (setting("process", "noNewPrivileges", value="yes"),
                                 "$.process.noNewPrivileges: expected a boolean, found a string"),
    "bounding-numbers": (setting("process", "capabilities", value={"bounding": [5]}),
                         "$.process.capabilities.bounding[0]: expected a string, found an "
                         "integer"),
    "seccomp-string": (setting("linux", "seccomp", value="x"),
                       "$.linux.seccomp: expected an object, found a string"),
    "apparmor-number": (setting("process", "apparmorProfile", value=5),
                        "$.process.apparmorProfile: expected a string, found an integer"),
    "ports-object": (lambda s: crio(s, **{"io.kubernetes.container.ports": '{"a": 1}'}),
                     f"{CRIO}: io.kubernetes.container.ports: expected an array, found an "
                     "object"),
    "labels-array": (lambda s: annotate(s, "io.kubernetes.cri-o.Labels", "[1]"),
                     "annotation io.kubernetes.cri-o.Labels: expected a JSON object, found an "
                     "array"),
    "container-name-number": (lambda s: meta(s, name=5),
                              "container name: 5 is not a DNS-1123 label: at most 63 "
                              "lower-case letters, digits and '-'"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_field_is_bad_input_naming_it(cli: Cli, hostile: Callable[..., Path],
                                                   case: str) -> None:
    change, problem = MALFORMED[case]
    archive = hostile(change)
    r = manifest(cli, archive)
    assert_clean_error(r, INVALID_INPUT, f"error: {archive}: spec.dump: {problem}")
    assert r.out == ""


# -- 2. the source's confinement comes back, never more -----------------------------------

def confined(spec: dict[str, Any]) -> None:
    """What CRI-O writes for a container asking RuntimeDefault for seccomp and AppArmor,
    with all capabilities dropped but two."""
    caps = ["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]
    spec["process"]["capabilities"] = {k: caps for k in ("bounding", "effective", "permitted")}
    spec["process"]["noNewPrivileges"] = True
    spec["process"]["apparmorProfile"] = "crio-default"
    spec["linux"]["seccomp"] = FILTER
    spec["annotations"][SECCOMP] = "RuntimeDefault"


CONFINED = {"runAsUser": 1000, "runAsGroup": 1000, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"], "add": ["CHOWN", "NET_BIND_SERVICE"]},
            "seccompProfile": {"type": "RuntimeDefault"},
            "appArmorProfile": {"type": "RuntimeDefault"}}


def test_the_source_confinement_comes_back(cli: Cli, hostile: Callable[..., Path],
                                           caplog: pytest.LogCaptureFixture) -> None:
    r = manifest(cli, hostile(confined))
    assert container_of(r)["securityContext"] == CONFINED
    assert warnings(caplog) == []
    kubernetes_validate.validate(r.json(), "1.30", strict=True)


@pytest.mark.parametrize(("changes", "seccomp", "apparmor"), [
    # A Localhost profile is named from the kubelet's seccomp directory, as the pod named it.
    ([setting("annotations", SECCOMP, value="/var/lib/kubelet/seccomp/profiles/audit.json")],
     {"type": "Localhost", "localhostProfile": "profiles/audit.json"}, None),
    # Older CRI-O: the kubelet's localhost/<file> form.
    ([setting("annotations", SECCOMP, value="localhost//var/lib/kubelet/seccomp/a.json")],
     {"type": "Localhost", "localhostProfile": "a.json"}, None),
    # No filter at all: none named, as the source's pod named none (an explicit
    # Unconfined is what PodSecurity's baseline refuses).
    ([setting("annotations", SECCOMP, value="Unconfined"), setting("linux", "seccomp",
                                                                     value=None)],
     "absent", None),
    ([setting("annotations", SECCOMP, value="Unconfined")], {"type": "RuntimeDefault"}, None),
    ([setting("process", "apparmorProfile", value="unconfined")], None, {"type": "Unconfined"}),
    ([setting("process", "apparmorProfile", value="k8s-deny-write")], None,
     {"type": "Localhost", "localhostProfile": "k8s-deny-write"}),
    ([setting("process", "apparmorProfile", value="")], None, "absent"),
])
def test_each_profile_as_the_source_had_it(cli: Cli, hostile: Callable[..., Path],
                                           changes: list[Change], seccomp: Any,
                                           apparmor: Any) -> None:
    security = container_of(manifest(cli, hostile(confined, *changes)))["securityContext"]
    if seccomp == "absent":
        assert "seccompProfile" not in security
    else:
        assert security["seccompProfile"] == (seccomp or CONFINED["seccompProfile"])
    if apparmor == "absent":  # no profile (AppArmor off): the runtime's default stays
        assert "appArmorProfile" not in security
    else:
        assert security["appArmorProfile"] == (apparmor or CONFINED["appArmorProfile"])


def test_a_filter_without_a_name_gets_the_runtime_default_and_a_warning(
        cli: Cli, hostile: Callable[..., Path], caplog: pytest.LogCaptureFixture) -> None:
    # CRI-O records "" for a profile from an OCI artifact: no name a Pod can give.
    archive = hostile(confined, setting("annotations", SECCOMP, value=""))
    assert container_of(manifest(cli, archive))["securityContext"]["seccompProfile"] == {
        "type": "RuntimeDefault"}
    assert [w for w in warnings(caplog) if "seccomp" in w] == [
        "the source ran under a seccomp filter CRI-O records no profile name for (one from an "
        "OCI artifact?): RuntimeDefault stands in; review before applying"]


def test_no_capabilities_recorded_gives_none(cli: Cli, hostile: Callable[..., Path]) -> None:
    archive = hostile(confined, setting("process", "capabilities", value={"bounding": []}))
    assert container_of(manifest(cli, archive))["securityContext"]["capabilities"] == {
        "drop": ["ALL"]}


@pytest.mark.parametrize(("change", "problem"), [
    (setting("annotations", SECCOMP, value="/etc/evil.json"),
     f"annotation {SECCOMP}: '/etc/evil.json' is not a seccomp profile under "
     "/var/lib/kubelet/seccomp/ (a Pod can name no other)"),
    (setting("annotations", SECCOMP, value="/var/lib/kubelet/seccomp/../x.json"),
     f"annotation {SECCOMP}: '/var/lib/kubelet/seccomp/../x.json' is not a seccomp profile "
     "under /var/lib/kubelet/seccomp/ (a Pod can name no other)"),
    (setting("annotations", SECCOMP, value="Whatever"),
     f"annotation {SECCOMP}: 'Whatever' is not a seccomp profile CRI-O records "
     "(RuntimeDefault, Unconfined or a profile's file)"),
    (setting("process", "capabilities", value={"bounding": ["SYS_ADMIN\n"]}),
     "$.process.capabilities.bounding[0]: 'SYS_ADMIN\\n' is not a capability name (CAP_...)"),
    (setting("process", "apparmorProfile", value="two words"),
     "$.process.apparmorProfile: 'two words' is not an AppArmor profile name"),
])
def test_a_profile_a_pod_cannot_name_is_refused(cli: Cli, hostile: Callable[..., Path],
                                                change: Change, problem: str) -> None:
    archive = hostile(confined, change)
    assert_clean_error(manifest(cli, archive), INVALID_INPUT,
                       f"error: {archive}: spec.dump: {problem}")


def test_before_1_30_the_apparmor_profile_is_the_beta_annotation(
        cli: Cli, hostile: Callable[..., Path]) -> None:
    archive = hostile(confined, setting("process", "apparmorProfile", value="k8s-deny-write"))
    r = manifest(cli, archive, "--k8s-version", "1.29")
    assert "appArmorProfile" not in container_of(r)["securityContext"]
    assert r.json()["metadata"]["annotations"][
        "container.apparmor.security.beta.kubernetes.io/counter"] == "localhost/k8s-deny-write"
    kubernetes_validate.validate(r.json(), "1.29", strict=True)


# -- 3. the archive's security annotations cannot override; a hostPort is said ------------

def test_security_annotations_are_dropped_and_a_host_port_is_said(
        cli: Cli, hostile: Callable[..., Path], caplog: pytest.LogCaptureFixture) -> None:
    archive = hostile(confined, lambda s: crio(s, **{
        "container.apparmor.security.beta.kubernetes.io/counter": "unconfined",
        "seccomp.security.alpha.kubernetes.io/pod": "unconfined",
        "team": "forensics",
        "io.kubernetes.container.ports": json.dumps([
            {"name": "ssh", "containerPort": 22, "hostPort": 2222, "hostIP": "10.0.0.1",
             "protocol": "TCP"}])}))
    r = manifest(cli, archive)
    container = container_of(r)
    annotations = r.json()["metadata"]["annotations"]
    assert "team" in annotations
    assert not [k for k in annotations if "security" in k]
    assert container["securityContext"] == CONFINED
    assert container["ports"] == [{"name": "ssh", "containerPort": 22, "protocol": "TCP",
                                   "hostPort": 2222, "hostIP": "10.0.0.1"}]
    assert warnings(caplog) == [
        "port 22/TCP takes the node's port 2222 on 10.0.0.1 as the archive records it: review "
        "before applying",
        "annotation 'container.apparmor.security.beta.kubernetes.io/counter' from the archive "
        "dropped: the container's securityContext carries the source's confinement",
        "annotation 'seccomp.security.alpha.kubernetes.io/pod' from the archive dropped: the "
        "container's securityContext carries the source's confinement"]


# -- 4. hostPaths: said, read-only when they were, typed when known, never another pod's ---

HOST_VOLUMES = [
    {"destination": "/host", "source": "/", "file_type": "directory", "permissions": 0o755},
    {"destination": "/run/crio.sock", "source": "/var/run/crio/crio.sock", "file_type": "file",
     "permissions": 0o660},
]


def test_host_paths_are_said_and_keep_their_mode_and_type(
        cli: Cli, make_archive: Callable[..., Path], hostile: Callable[..., Path],
        caplog: pytest.LogCaptureFixture) -> None:
    base = make_archive(volumes=HOST_VOLUMES)
    # /etc/kubernetes, read-only, has no bind.mounts entry: its type is unknown.
    archive = hostile(lambda s: mount(s, "/kube", "/etc/kubernetes", "ro", "rbind"), base=base)
    r = manifest(cli, archive)
    container = container_of(r)
    volumes = {v["name"]: v for v in r.json()["spec"]["volumes"]}
    assert volumes == {
        "host": {"name": "host", "hostPath": {"path": "/", "type": "Directory"}},
        # bind.mounts' "file" is anything but a directory (a socket here): no type File.
        "host-var-run-crio-crio-sock": {"name": "host-var-run-crio-crio-sock",
                                        "hostPath": {"path": "/var/run/crio/crio.sock"}},
        "host-etc-kubernetes": {"name": "host-etc-kubernetes",
                                "hostPath": {"path": "/etc/kubernetes"}}}
    assert container["volumeMounts"] == [
        {"name": "host", "mountPath": "/host"},
        {"name": "host-var-run-crio-crio-sock", "mountPath": "/run/crio.sock"},
        {"name": "host-etc-kubernetes", "mountPath": "/kube", "readOnly": True}]
    assert warnings(caplog) == [
        "volume 'host' is the node's /, mounted writable at /host as the archive records it: "
        "review before applying",
        "volume 'host-var-run-crio-crio-sock' is the node's /var/run/crio/crio.sock, mounted "
        "writable at /run/crio.sock as the archive records it: review before applying",
        "volume 'host-etc-kubernetes' is the node's /etc/kubernetes, mounted read-only at "
        "/kube as the archive records it: review before applying"]


@pytest.mark.parametrize(("change", "problem"), [
    (lambda s: mount(s, "/stolen", "/var/lib/kubelet/pods/0b1c/volumes/kubernetes.io~secret/"
                     "token", "ro", "rbind"),
     "mount at '/stolen': '/var/lib/kubelet/pods/0b1c/volumes/kubernetes.io~secret/token' is "
     "not in this pod's own directory: another pod's kubelet files cannot come back as a "
     "hostPath"),
    (lambda s: mount(s, "/pods", "/var/lib/kubelet/pods", "rbind"),
     "mount at '/pods': '/var/lib/kubelet/pods' is not in this pod's own directory: another "
     "pod's kubelet files cannot come back as a hostPath"),
    (lambda s: mount(s, "/hostproc", "proc", kind="proc"),
     "mount at '/hostproc': 'proc' is not an absolute, normalised source path (no Pod volume "
     "can provide it)"),
    (lambda s: mount(s, "/shadow", "/etc/../etc/shadow", "bind"),
     "mount at '/shadow': '/etc/../etc/shadow' is not an absolute, normalised source path (no "
     "Pod volume can provide it)"),
    (lambda s: mount(s, "/escape", f"{POD_DIR}/volumes/../../0b1c/volumes/x", "bind"),
     f"mount at '/escape': '{POD_DIR}/volumes/../../0b1c/volumes/x' is not an absolute, "
     "normalised source path (no Pod volume can provide it)"),
])
def test_a_mount_no_pod_should_get_is_refused(cli: Cli, hostile: Callable[..., Path],
                                              caplog: pytest.LogCaptureFixture,
                                              change: Change, problem: str) -> None:
    archive = hostile(change)
    assert_clean_error(manifest(cli, archive), INVALID_INPUT,
                       f"error: {archive}: spec.dump: {problem}")
    assert warnings(caplog) == []  # refused before any warning


# -- 5. names and values Kubernetes would refuse ------------------------------------------

INVALID: dict[str, tuple[Change, str]] = {
    "pod-name-case": (setting("annotations", "io.kubernetes.pod.name", value="Evil_Pod"),
                      "annotation io.kubernetes.pod.name: 'Evil_Pod' is not a pod name (a "
                      "DNS-1123 subdomain: at most 253 lower-case letters, digits, '-' and '.')"),
    "pod-name-newline": (setting("annotations", "io.kubernetes.pod.name", value="web\nerror: x"),
                         "annotation io.kubernetes.pod.name: 'web\\nerror: x' is not a pod name "
                         "(a DNS-1123 subdomain: at most 253 lower-case letters, digits, '-' "
                         "and '.')"),
    "namespace": (setting("annotations", "io.kubernetes.pod.namespace", value="Bad NS"),
                  "annotation io.kubernetes.pod.namespace: 'Bad NS' is not a namespace (a "
                  "DNS-1123 label: at most 63 lower-case letters, digits and '-')"),
    "pod-uid-path": (setting("annotations", "io.kubernetes.pod.uid", value="../x"),
                     "annotation io.kubernetes.pod.uid: '../x' is not a pod uid"),
    "container-name": (lambda s: meta(s, name="Counter_X"),
                       "container name: 'Counter_X' is not a DNS-1123 label: at most 63 "
                       "lower-case letters, digits and '-'"),
    "container-port": (lambda s: crio(s, **{"io.kubernetes.container.ports": json.dumps(
        [{"containerPort": 99999999}])}),
        f"{CRIO}: io.kubernetes.container.ports[0].containerPort: 99999999 is out of range "
        "(1 to 65535)"),
    "protocol": (lambda s: crio(s, **{"io.kubernetes.container.ports": json.dumps(
        [{"containerPort": 80, "protocol": "XYZ"}])}),
        f"{CRIO}: io.kubernetes.container.ports[0].protocol: 'XYZ' is not TCP, UDP or SCTP"),
    "run-as-group": (setting("process", "user", value={"uid": 5, "gid": -1}),
                     "$.process.user.gid: -1 is out of range (0 to 2147483647)"),
    "grace-30-digits": (lambda s: crio(s, **{"io.kubernetes.pod.terminationGracePeriod":
                                             "9" * 30}),
                        f"{CRIO}: io.kubernetes.pod.terminationGracePeriod: '{'9' * 30}' is "
                        "not a number of seconds (0 to 2^63-1)"),
    "message-policy": (lambda s: crio(s, **{"io.kubernetes.container.terminationMessagePolicy":
                                            "Bogus"}),
                       f"{CRIO}: io.kubernetes.container.terminationMessagePolicy: 'Bogus' is "
                       "not File or FallbackToLogsOnError"),
    "mount-path-empty": (lambda s: mount(s, "", "/srv", "bind"),
                         "mount at '': '' is not an absolute, normalised container path"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_a_value_kubernetes_refuses_is_bad_input(cli: Cli, hostile: Callable[..., Path],
                                                  case: str) -> None:
    change, problem = INVALID[case]
    archive = hostile(change)
    assert_clean_error(manifest(cli, archive), INVALID_INPUT,
                       f"error: {archive}: spec.dump: {problem}")


def test_invalid_labels_and_annotations_are_dropped_with_a_warning(
        cli: Cli, hostile: Callable[..., Path], caplog: pytest.LogCaptureFixture) -> None:
    """Merely copied, so dropped rather than refused: the Pod restores without them."""
    labels = {"app": "counters", "tier": "x" * 64, "bad key!": "v", "ok": "a b"}
    archive = hostile(
        lambda s: annotate(s, "io.kubernetes.cri-o.Labels", json.dumps(labels)),
        lambda s: crio(s, **{"x\nz": "y", "example.com/team": "forensics"}))
    r = manifest(cli, archive)
    assert r.code == 0, r.err
    pod = r.json()
    assert pod["metadata"]["labels"] == {"app": "counters"}
    assert pod["metadata"]["annotations"]["example.com/team"] == "forensics"
    assert "x\nz" not in pod["metadata"]["annotations"]
    assert warnings(caplog) == [
        f"label 'tier' from the archive dropped: '{'x' * 64}' is not a valid label value",
        "label 'bad key!' from the archive dropped: not a valid label key",
        "label 'ok' from the archive dropped: 'a b' is not a valid label value",
        "annotation 'x\\nz' from the archive dropped: not a valid annotation key"]


def test_a_node_or_name_with_a_trailing_newline_is_a_usage_error(
        cli: Cli, counters_archive: Path) -> None:
    r = cli("manifest", "--archive", counters_archive, "--image", "r/x:1", "--node", "node-b\n")
    assert r.code == 2, r.err
    r = cli("manifest", "--archive", counters_archive, "--image", "r/x:1", "--node", "node-b",
            "--name", "web\n")
    assert r.code == 2, r.err
