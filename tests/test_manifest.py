"""`migrate manifest`: golden restore Pods from live pods (the pipeline, and the CLI
against the real control plane with node agents) and from archives (e2e.archives.archivegen),
every one also checked here with kubernetes-validate; and the bad inputs.

Golden files are in tests/golden/manifest/: ``<case>.source.json`` is the pod
as a 1.30 API server serves it, ``<case>.yaml`` the Pod we print. After an
intended change, ``UPDATE_GOLDEN=1 pytest tests/test_manifest.py`` rewrites them.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes import client

from e2e.archives.archivegen import ArchiveSpec, build
from e2e.cluster.launcher import ControlPlane
from e2e.cluster.world import Cluster
from migrate.errors import NotFoundError, RenderError, UsageError
from migrate.pipeline.manifest import (
    CHECKPOINT_IMAGES,
    PodSource,
    RestoreOptions,
    assign_images,
    derive_name,
    parse_images,
    render_restore_pod,
)
from migrate.validation import kubernetes_versions, validate
from tests.cluster import api_client, node_agents
from tests.conftest import Result
from tests.test_untrusted_input import rewrite_member

Cli = Callable[..., Result]
GOLDEN = Path(__file__).parent / "golden" / "manifest"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
DIGEST = "sha256:" + "5e" * 32
# case -> the --image values it is rendered with
CASES: dict[str, list[str]] = {
    "bare": ["reg.example/ckpt/counter:v1"],
    "deployment": ["reg.example/ckpt/web:v1@" + DIGEST],
    "multi-container": ["api=reg.example/ckpt/orders-api:v1",
                        "log-shipper=reg.example/ckpt/shipper:v1"],
    "volumes": ["reg.example/ckpt/ledger:v1"],
}


def source(case: str) -> dict[str, Any]:
    return json.loads((GOLDEN / f"{case}.source.json").read_text())  # type: ignore[no-any-return]


def as_yaml(pod: dict[str, Any]) -> str:
    return yaml.safe_dump(pod, sort_keys=False, allow_unicode=True)


def assert_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert text == path.read_text(), f"differs from {path} (UPDATE_GOLDEN=1 rewrites it)"


def independently_valid(pod: dict[str, Any], version: str = "1.30") -> None:
    """The check the tool makes, made again here, through the package's own entry point."""
    kubernetes_validate.validate(pod, version, strict=True)
    validate(pod, "manifest.schema.json", "rendered")


def render(case: str, **options: Any) -> dict[str, Any]:
    pod = source(case)
    images = assign_images(pod, parse_images(CASES[case]), None)
    return render_restore_pod(pod, images, RestoreOptions(node="node-b", **options))


# -- rendering, from the pod as the API serves it ---------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    pod = render(case)
    independently_valid(pod)
    kubernetes_validate.validate(pod, "1.37", strict=True)
    assert_golden(f"{case}.yaml", as_yaml(pod))


def test_what_is_dropped_and_kept_from_a_deployment_pod() -> None:
    pod = render("deployment")
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["name"] == "web-5d4f8b7c9-x2x7q-restored"
    assert set(meta) == {"name", "namespace", "labels", "annotations"}  # no uid, owners...
    assert meta["labels"] == {"app": "web", "pod-template-hash": "5d4f8b7c9"}
    assert spec["nodeName"] == "node-b"
    for gone in ("nodeSelector", "schedulerName", "priority", "serviceAccount"):
        assert gone not in spec
    assert spec["affinity"] == {
        "podAntiAffinity": source("deployment")["spec"]["affinity"]["podAntiAffinity"]}
    assert spec["priorityClassName"] == "shop-critical"
    (web,) = spec["containers"]
    assert web["image"] == f"reg.example/ckpt/web:v1@{DIGEST}"
    assert "imagePullPolicy" not in web  # defaulted again from the new reference
    assert web["env"][1]["valueFrom"] == {"secretKeyRef": {"name": "web-db", "key": "password"}}
    assert "volumeMounts" not in web and "volumes" not in spec  # only the token was mounted
    assert json.loads(meta["annotations"][CHECKPOINT_IMAGES]) == {"web": web["image"]}


def test_keep_owner_references_for_a_handover() -> None:
    pod = render("deployment", keep_owner_references=True)
    assert pod["metadata"]["ownerReferences"] == source("deployment")["metadata"][
        "ownerReferences"]


def test_generate_name_and_dropped_labels() -> None:
    pod = render("deployment", generate_name=True, drop_labels=("pod-template-hash",))
    assert pod["metadata"]["generateName"] == "web-5d4f8b7c9-" and "name" not in pod["metadata"]
    assert pod["metadata"]["labels"] == {"app": "web"}
    pod = render("bare", generate_name=True)
    assert pod["metadata"]["generateName"] == "counters-"


def test_init_containers_dropped_sidecars_kept_unless_asked() -> None:
    spec = render("multi-container")["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["mesh-proxy"]  # native sidecar
    spec = render("multi-container", keep_init_containers=True)["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["migrate-db", "mesh-proxy"]
    assert all("kube-api-access" not in json.dumps(c) for c in spec["initContainers"])


def test_a_finished_init_container_cannot_be_restored_unless_kept() -> None:
    pod = source("multi-container")
    with pytest.raises(UsageError, match="init container migrate-db is not kept") as e:
        render_restore_pod(pod, {"migrate-db": "r/x:1"}, RestoreOptions(node="node-b"))
    assert e.value.hint == "pass --keep-init-containers to restore it"
    out = render_restore_pod(pod, {"migrate-db": "r/x:1"},
                             RestoreOptions(node="node-b", keep_init_containers=True))
    assert out["spec"]["initContainers"][0]["image"] == "r/x:1"


def test_derived_names() -> None:
    assert derive_name("web") == "web-restored"
    assert derive_name("web-restored") == "web-restored-2"
    assert derive_name("web-restored-2") == "web-restored-3"
    assert len(derive_name("a" * 253)) == 253


def test_image_arguments() -> None:
    assert parse_images(["r/a:1"]).default == "r/a:1"
    assert parse_images(["r/a:1"], DIGEST).default == f"r/a:1@{DIGEST}"
    assert parse_images(["app=r/a:1", "side=r/b:1"]).named == (("app", "r/a:1"),
                                                              ("side", "r/b:1"))
    for bad, digest in [(["r/a:1", "r/b:1"], None), (["app=r/a", "app=r/b"], None),
                        (["r/a:1", "b=r/b:1"], DIGEST), (["r/a:1"], "sha256:12"),
                        (["Bad Name=r/a:1"], None), (["UPPER/case"], None), ([], None),
                        ([f"r/a@{DIGEST}"], "sha256:" + "0" * 64)]:
        with pytest.raises(UsageError):
            parse_images(bad, digest)


def test_image_mapping_must_name_a_container() -> None:
    with pytest.raises(NotFoundError) as e:
        assign_images(source("multi-container"), parse_images(["db=r/x:1"]), None)
    assert e.value.message == "pod default/orders has no container 'db' (--image db=...)"
    assert e.value.hint == "its containers: api, log-shipper, migrate-db, mesh-proxy"
    # A plain REF goes to the default container, here by annotation.
    assert assign_images(source("multi-container"), parse_images(["r/x:1"]), None) == {
        "api": "r/x:1"}


def test_an_invalid_result_is_a_bug_and_names_the_path() -> None:
    pod = source("bare")
    pod["spec"]["containers"][0]["resizePolicy"] = [
        {"resourceName": "cpu", "restartPolicy": "NotRequired"}]  # Kubernetes 1.27+
    render_restore_pod(pod, {"counter": "r/x:1"}, RestoreOptions(node="n", k8s_version="1.27"))
    with pytest.raises(RenderError) as e:
        render_restore_pod(pod, {"counter": "r/x:1"},
                           RestoreOptions(node="n", k8s_version="1.25"))
    assert e.value.exit_code == 1
    assert e.value.message == (
        "the restore Pod is not a valid Pod for Kubernetes 1.25 at $.spec.containers[0]: "
        "Additional properties are not allowed ('resizePolicy' was unexpected)")


def test_the_kubernetes_schemas_are_parsed_once_per_kind_and_release(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A drain renders a Pod per migration; the release's definitions are megabytes of JSON.
    from kubernetes_validate import utils

    from migrate import validation

    validation._kubernetes_validator.cache_clear()
    parsed: list[str] = []
    real = utils.schema_contents

    def counted(name: str, version: str) -> Any:
        parsed.append(name)
        return real(name, version)

    monkeypatch.setattr(utils, "schema_contents", counted)
    for _ in range(3):
        render_restore_pod(source("bare"), {"counter": "r/x:1"},
                           RestoreOptions(node="n", k8s_version="1.29"))
    assert len(parsed) == 2 and parsed[1].endswith("/_definitions.json")
    assert "v1.29" in parsed[0] and parsed[0].endswith("-strict/pod-v1.json")
    with pytest.raises(RenderError) as e:  # a kind the release has no schema for
        validation.check_kubernetes({"apiVersion": "v1", "kind": "Gadget"}, "1.29", "it")
    assert e.value.message == "Kubernetes 1.29 has no schema for Gadget (v1)"


def test_templates_are_filled_with_exactly_what_they_use() -> None:
    from migrate.pipeline.templating import fill

    values = {"name": "p", "generate_name": None, "namespace": "ns", "labels": None,
              "annotations": {"a": "b"}, "owner_references": None, "node": "n",
              "spec": {"nodeName": "ignored", "containers": [{"name": "c", "image": "$node"}]}}
    pod = fill("restore-pod.yaml", values)
    assert pod == {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "p", "namespace": "ns", "annotations": {"a": "b"}},
                   # the template's nodeName wins; a value is data, never a placeholder
                   "spec": {"nodeName": "n", "containers": [{"name": "c", "image": "$node"}]}}
    with pytest.raises(RenderError, match=r"uses \$node, which the tool did not supply"):
        fill("restore-pod.yaml", {k: v for k, v in values.items() if k != "node"})
    with pytest.raises(RenderError, match=r"does not use \$extra"):
        fill("restore-pod.yaml", {**values, "extra": 1})


def test_the_bind_mount_rule_is_checked() -> None:
    pod = source("bare")
    with pytest.raises(RenderError, match="does not mount /data in container counter"):
        render_restore_pod(PodSource(pod, required_mounts=("/data",)), {"counter": "r/x:1"},
                           RestoreOptions(node="n"))


def test_the_version_a_cluster_reports() -> None:
    from migrate.adapters.kube import version_of
    from migrate.pipeline.manifest_request import cluster_version

    assert version_of({"major": "1", "minor": "30"}) == "1.30"
    assert version_of({"major": "1", "minor": "29+", "gitVersion": "v1.29.8-gke.1"}) == "1.29"
    assert version_of({"major": "", "minor": "", "gitVersion": "v1.31.2+k3s1"}) == "1.31"
    assert cluster_version("1.30") == "1.30"
    newest = kubernetes_versions()[-1]
    assert cluster_version("1.99") == newest  # newer than our schemas: the newest, warned
    assert cluster_version("1.24") == "1.25"


# -- the CLI against the real control plane with node agents ------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(real_cp: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with node_agents(real_cp, tmp_path_factory.mktemp("nodes"), start_latency=0.05,
                     stop_latency=0.05) as world, fixture_priority_class(world.kubeconfig):
        yield world


@contextlib.contextmanager
def fixture_priority_class(kubeconfig: Path) -> Iterator[None]:
    """The deployment fixture's PriorityClass, with the priority its pod carries: the
    Priority admission plugin refuses a pod naming a class that does not exist, or a
    priority other than its class's."""
    with api_client(kubeconfig) as admin:
        scheduling = client.SchedulingV1Api(admin)
        scheduling.create_priority_class({"metadata": {"name": "shop-critical"},
                                          "value": 100000})
        try:
            yield
        finally:
            scheduling.delete_priority_class("shop-critical")


def create(v1: client.CoreV1Api, pod: dict[str, Any]) -> str:
    """Create the fixture's pod (what a client may send) and return its uid."""
    # Not its ownerReferences: the garbage collector deletes a pod whose
    # owner (a ReplicaSet that exists only in the fixture) is missing, as a cluster would.
    keep = ("name", "generateName", "labels", "annotations")
    body = {"metadata": {k: v for k, v in pod["metadata"].items() if k in keep},
            "spec": copy.deepcopy(pod["spec"])}
    created = v1.create_namespaced_pod("default", body)
    return str(created.metadata.uid)


@pytest.mark.parametrize("case", sorted(CASES))
def test_from_pod_over_https_matches_the_golden(cli: Cli, cluster: Cluster,
                                                v1: client.CoreV1Api, case: str) -> None:
    pod = source(case)
    uid = create(v1, pod)
    args = [a for image in CASES[case] for a in ("--image", image)]
    r = cli("manifest", "--from-pod", pod["metadata"]["name"], *args, "--node", "node-b",
            "--kubeconfig", cluster.kubeconfig)
    assert r.code == 0, r.err
    # The API server gave the pod its own uid (and orders keys its own way); everything
    # else comes out as from the fixture.
    served = yaml.safe_load(r.out.replace(uid, pod["metadata"]["uid"]))
    assert served == yaml.safe_load((GOLDEN / f"{case}.yaml").read_text())
    independently_valid(served)
    as_json = cli("manifest", "--from-pod", pod["metadata"]["name"], *args, "--node", "node-b",
                  "--kubeconfig", cluster.kubeconfig, "-o", "json")
    assert as_json.json() == yaml.safe_load(r.out)


def test_unknown_pod(cli: Cli, cluster: Cluster) -> None:
    r = cli("manifest", "--from-pod", "ghost", "--image", "r/x:1", "--node", "node-b",
            "--kubeconfig", cluster.kubeconfig)
    assert (r.code, r.out) == (4, "")
    assert r.err.startswith("error: pod default/ghost does not exist\nhint: ")


def test_unknown_container_and_unknown_mapping(cli: Cli, cluster: Cluster,
                                               v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod("default", {"metadata": {"name": "duo"}, "spec": {
        "nodeName": "node-a", "containers": [{"name": "app", "image": "r/app:1"},
                                             {"name": "side", "image": "r/side:1"}]}})
    base = ("manifest", "--from-pod", "duo", "--node", "node-b", "--kubeconfig", cluster.kubeconfig)
    r = cli(*base, "--image", "r/x:1", "-c", "db")
    assert (r.code, r.err) == (4, "error: pod default/duo has no container 'db'\n"
                                  "hint: its containers: app, side\n")
    r = cli(*base, "--image", "app=r/x:1", "--image", "db=r/y:1")
    assert (r.code, r.err) == (4, "error: pod default/duo has no container 'db' "
                                  "(--image db=...)\nhint: its containers: app, side\n")
    r = cli(*base, "--image", "r/x:1")
    assert (r.code, r.err) == (2, "error: pod default/duo has 2 containers; say which with "
                                  "-c\nhint: its containers: app, side\n")
    r = cli(*base, "--image", "r/x:1", "-c", "side", "-o", "json")
    assert r.code == 0, r.err
    assert [c["image"] for c in r.json()["spec"]["containers"]] == ["r/app:1", "r/x:1"]


def test_version_comes_from_the_cluster_or_the_flag(cli: Cli, cluster: Cluster,
                                                    v1: client.CoreV1Api) -> None:
    pod = source("bare")
    pod["metadata"]["name"] = "resizable"
    pod["spec"]["containers"][0]["resizePolicy"] = [
        {"resourceName": "cpu", "restartPolicy": "NotRequired"}]
    create(v1, pod)
    base = ("manifest", "--from-pod", "resizable", "--image", "r/x:1", "--node", "node-b",
            "--kubeconfig", cluster.kubeconfig)
    assert cli(*base).code == 0  # the cluster says 1.37, which knows resizePolicy
    r = cli(*base, "--k8s-version", "1.25")
    assert (r.code, r.out) == (1, "")  # never printed
    first, hint = r.err.splitlines()
    assert first == ("error: the restore Pod is not a valid Pod for Kubernetes 1.25 at "
                     "$.spec.containers[0]: Additional properties are not allowed "
                     "('resizePolicy' was unexpected)")
    assert hint.startswith("hint: this is a bug in migrate")


@pytest.mark.parametrize("args, message", [
    (["--from-pod", "x", "--k8s-version", "1.9"], "unknown Kubernetes version '1.9'"),
    (["--from-pod", "x", "--k8s-version", "banana"], "unknown Kubernetes version 'banana'"),
    ([], "give one of --from-pod POD or --archive ARCHIVE"),
    (["--from-pod", "x", "--archive", "a.tar"], "give one of --from-pod POD or --archive ARCHIVE"),
    (["--from-pod", "x", "--name", "a", "--generate-name"],
     "--name and --generate-name exclude each other"),
])
def test_usage_errors(cli: Cli, cluster: Cluster, args: list[str], message: str) -> None:
    r = cli("manifest", "--image", "r/x:1", "--node", "node-b", "--kubeconfig", cluster.kubeconfig,
            *args)
    assert (r.code, r.out, r.err.splitlines()[0]) == (2, "", f"error: {message}")
    if "version" in message:
        assert r.err.splitlines()[1] == "hint: supported: " + ", ".join(kubernetes_versions())
        assert kubernetes_versions()[:6] == ("1.25", "1.26", "1.27", "1.28", "1.29", "1.30")


# -- from an archive, the pod gone ------------------------------------------------------

POD_DIR = "/var/lib/kubelet/pods/6a2d1a4e-53a1-4f8b-9c1e-0d5e0f1b7a21"
ARCHIVE_VOLUMES = [
    {"destination": "/var/cache/counter", "file_type": "directory", "permissions": 0o777,
     "source": f"{POD_DIR}/volumes/kubernetes.io~empty-dir/cache"},
    {"destination": "/etc/counter", "file_type": "directory", "permissions": 0o755,
     "source": f"{POD_DIR}/volumes/kubernetes.io~configmap/settings"},
    {"destination": "/data", "file_type": "directory", "permissions": 0o755,
     "source": f"{POD_DIR}/volumes/kubernetes.io~csi/pvc-4f1c2d3e/mount"},
    {"destination": "/etc/counter.conf", "file_type": "file", "permissions": 0o644,
     "source": f"{POD_DIR}/volume-subpaths/settings/counter/3"},
    {"destination": "/var/log/host", "file_type": "directory", "permissions": 0o755,
     "source": "/var/log/counter"},
    {"destination": "/run/app.sock", "file_type": "file", "permissions": 0o660,
     "source": "/run/app/app.sock"},
]


@pytest.fixture(scope="module")
def volume_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("archives") / "checkpoint-counters_default-counter.tar"
    return build(ArchiveSpec(volumes=ARCHIVE_VOLUMES, use_crit=True, annotations={
        "io.kubernetes.container.terminationMessagePolicy": "File",
        "io.kubernetes.pod.terminationGracePeriod": "45",
        "io.kubernetes.container.ports": '[{"name":"http","containerPort":8088,'
                                         '"protocol":"TCP"}]',
        "team": "forensics"}), out)


def test_from_archive_golden(cli: Cli, volume_archive: Path,
                             caplog: pytest.LogCaptureFixture) -> None:
    r = cli("manifest", "--archive", volume_archive, "--image", "reg.example/ckpt/counter:v1",
            "--digest", DIGEST, "--node", "node-b")
    assert r.code == 0, r.err
    pod = yaml.safe_load(r.out)
    independently_valid(pod)
    assert_golden("archive.yaml", r.out)
    # Every mount CRI-O will ask for is there, except what the kubelet adds to any pod.
    mounted = {m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert mounted == {v["destination"] for v in ARCHIVE_VOLUMES}
    placeholders = pod["metadata"]["annotations"]["migrate.dev/placeholder-volumes"]
    assert placeholders == "settings,pvc-4f1c2d3e,settings-subpath"
    # (stderr's "WARNING: ..." lines; in-process, pytest captures the log records)
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelname == "WARNING"]
    standing_in = [w for w in warnings if "cannot be rebuilt" in w]
    assert [w.split("'")[1] for w in standing_in] == placeholders.split(",")
    assert "(configMap at /etc/counter)" in standing_in[0]
    assert "cannot be bound onto a file" in standing_in[2]
    # Each hostPath is said, to be reviewed: the archive chose the node's paths.
    assert [w for w in warnings if w not in standing_in] == [
        "volume 'host-var-log-counter' is the node's /var/log/counter, mounted writable at "
        "/var/log/host as the archive records it: review before applying",
        "volume 'host-run-app-app-sock' is the node's /run/app/app.sock, mounted writable at "
        "/run/app.sock as the archive records it: review before applying"]


def test_from_archive_namespace_and_bare_archive(cli: Cli, counters_archive: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    r = cli("manifest", "--archive", counters_archive, "--image", "r/x:1", "--node", "node-b",
            "-n", "recovered", "-o", "json")
    assert (r.code, r.err, caplog.records) == (0, "", [])  # nothing to stand in for
    pod = r.json()
    assert pod["metadata"]["namespace"] == "recovered"
    assert pod["metadata"]["annotations"]["migrate.dev/source-pod"] == "default/counters"
    assert pod["metadata"]["annotations"]["migrate.dev/checkpoint-time"] == (
        "2023-03-02T06:08:12.000000001Z")
    assert "volumes" not in pod["spec"]  # hosts, termination log, token: the kubelet's


def test_from_archive_resources_and_security_as_the_kubelet_set_them(
        cli: Cli, make_archive: Callable[..., Path]) -> None:
    """The OCI spec holds what the kubelet made of the pod's resources (kuberuntime:
    shares = millicores * 1024 // 1000, quota = millicores * period // 1000) and security
    context: the manifest turns them back into what the pod asked for. The pod of the
    real-node test with limits: requests 50m, limits 500m and 128Mi, read-only root, no
    privilege escalation."""
    original = make_archive()

    def with_spec(name: str, spec: dict[str, Any]) -> Path:
        return rewrite_member(original, original.with_name(name), "spec.dump",
                              lambda _: json.dumps(spec).encode())

    with tarfile.open(original) as tf:
        spec = json.load(tf.extractfile("spec.dump"))  # type: ignore[arg-type]
    spec["linux"]["resources"] = {"memory": {"limit": 128 * 1024 * 1024},
                                  "cpu": {"shares": 51, "quota": 50000, "period": 100000}}
    spec["process"]["noNewPrivileges"] = True
    spec["root"]["readonly"] = True
    archive = with_spec("limits.tar", spec)
    r = cli("manifest", "--archive", archive, "--image", "r/x:1", "--node", "node-b",
            "-o", "json")
    assert r.code == 0, r.err
    (container,) = r.json()["spec"]["containers"]
    assert container["resources"] == {"limits": {"memory": "134217728", "cpu": "500m"},
                                      "requests": {"cpu": "50m"}}
    # No capabilities and no seccomp filter in this spec.dump: none given back, and no
    # profile named, as the source's pod named none (tests/test_manifest_hostile.py).
    assert container["securityContext"] == {
        "runAsUser": 1000, "runAsGroup": 1000, "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    # Each request the kubelet can turn into shares comes back as it was.
    for millis in (3, 50, 100, 250, 333, 999, 1000, 1500, 4000):
        shares = millis * 1024 // 1000
        spec["linux"]["resources"] = {"cpu": {"shares": shares}}
        again = with_spec(f"m{millis}.tar", spec)
        r = cli("manifest", "--archive", again, "--image", "r/x:1", "--node", "node-b",
                "-o", "json")
        assert r.json()["spec"]["containers"][0]["resources"] == {
            "requests": {"cpu": f"{millis}m"}}, millis


def test_archive_without_spec_dump(cli: Cli, make_archive: Callable[..., Path]) -> None:
    broken = make_archive(omit=("spec.dump",))
    r = cli("manifest", "--archive", broken, "--image", "r/x:1", "--node", "node-b")
    assert (r.code, r.out) == (3, "")
    assert r.err == (f"error: {broken}: spec.dump: missing from the archive\n"
                     "hint: this does not look like a complete container checkpoint\n")


def test_archive_image_mapping_names_its_container(cli: Cli, counters_archive: Path) -> None:
    r = cli("manifest", "--archive", counters_archive, "--image", "web=r/x:1", "--node", "n")
    assert (r.code, r.err) == (4, "error: pod default/counters has no container 'web' "
                                  "(--image web=...)\nhint: its containers: counter\n")


def test_checkpoint_of_a_node_agents_pod_comes_back_with_its_volumes(
        cli: Cli, cluster: Cluster, v1: client.CoreV1Api) -> None:
    """The node agent records the pod's volumeMounts as bind mounts, with the
    kubelet's own paths: the archive alone must give a manifest mounting all of them."""
    from tests.cluster import wait_for

    pod = source("volumes")
    pod["metadata"]["name"] = "ledger-1"
    create(v1, pod)
    wait_for(lambda: v1.read_namespaced_pod("ledger-1", "default").status.phase == "Running")
    r = cli("checkpoint", "ledger-1", "--kubeconfig", cluster.kubeconfig, "-o", "json")
    assert r.code == 0, r.err
    archive = cluster.node_path("node-a", r.json()["archive"])
    r = cli("manifest", "--archive", archive, "--image", "r/ckpt:1", "--node", "node-b",
            "-o", "json")
    assert r.code == 0, r.err
    rebuilt = r.json()
    independently_valid(rebuilt)
    wanted = {m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]
              if not m["name"].startswith("kube-api-access-")}
    got = {m["mountPath"] for m in rebuilt["spec"]["containers"][0]["volumeMounts"]}
    assert got == wanted
    volumes = {v["name"]: v for v in rebuilt["spec"]["volumes"]}
    assert volumes["scratch"] == {"name": "scratch", "emptyDir": {}}
