"""Schema validation in the cluster simulator (e2e.sim), as the API server does it.

Bodies are decoded against the Kubernetes OpenAPI schemas (kubernetes-validate)
first: type errors are 400 BadRequest in Go's JSON words, unknown fields follow
`fieldValidation` (Strict 400, Warn a Warning header, Ignore), patches answer
422 on `patch`; missing required fields are 422 Invalid with field causes.
Exercised with raw HTTPS (to send what typed clients cannot), the official
client and kubectl.
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml
from kubernetes import client

from e2e.sim import Simulator
from e2e.sim.discovery import KUBE_VERSION
from e2e.sim.errors import ApiError
from e2e.sim.schema import schemas_for
from e2e.sim.validation import decode, field_validation, required_errors
from tests.simulated import DEADLINE, kubectl_runner, needs_kubectl, sim_client

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
PODS = "/api/v1/namespaces/default/pods"


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    with Simulator(tmp_path_factory.mktemp("sim") / "state", nodes=["node-a"]) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def http(sim: Simulator) -> Iterator[Callable[..., urllib3.BaseHTTPResponse]]:
    """http(method, path, body=None, content_type=..., **query): a raw admin request."""
    pool = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(sim.ca.cert),
                               retries=False, timeout=DEADLINE)

    def request(method: str, path: str, body: Any = None,
                content_type: str = "application/json", **query: str
                ) -> urllib3.BaseHTTPResponse:
        url = f"{sim.url}{path}"
        if query:
            url += "?" + "&".join(f"{k}={v}" for k, v in query.items())
        return pool.request(method, url, body=None if body is None else json.dumps(body),
                            headers={"Authorization": f"Bearer {sim.token}",
                                     "Content-Type": content_type})

    yield request
    pool.clear()


def _pod(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}],
                     **spec}}


def _cannot_handle(detail: str) -> str:
    return f'Pod in version "v1" cannot be handled as a Pod: {detail}'


# -- decoding: type errors are 400 ----------------------------------------------------


@pytest.mark.parametrize(("change", "detail"), [
    (lambda p: p["spec"].update(terminationGracePeriodSeconds="30"),
     "json: cannot unmarshal string into Go struct field PodSpec.spec."
     "terminationGracePeriodSeconds of type int64"),
    (lambda p: p["spec"]["containers"][0].update(env=[{"name": "A", "value": 1}]),
     "json: cannot unmarshal number into Go struct field EnvVar.spec.containers.env.value of "
     "type string"),
    (lambda p: p["spec"].update(containers=["app"]),
     "json: cannot unmarshal string into Go struct field PodSpec.spec.containers of type "
     "v1.Container"),
    (lambda p: p["spec"].update(containers={"name": "app"}),
     "json: cannot unmarshal object into Go struct field PodSpec.spec.containers of type "
     "[]v1.Container"),
    (lambda p: p["metadata"].update(labels={"tier": 1}),
     "json: cannot unmarshal number into Go struct field ObjectMeta.metadata.labels of type "
     "string"),
    (lambda p: p["spec"]["containers"][0].update(ports=[{"containerPort": 1.5}]),
     "json: cannot unmarshal number 1.5 into Go struct field ContainerPort.spec.containers."
     "ports.containerPort of type int32"),
    (lambda p: p["spec"]["containers"][0].update(ports=[{"containerPort": 2**40}]),
     f"json: cannot unmarshal number {2**40} into Go struct field ContainerPort.spec."
     f"containers.ports.containerPort of type int32"),
    (lambda p: p["spec"].update(hostNetwork="yes"),
     "json: cannot unmarshal string into Go struct field PodSpec.spec.hostNetwork of type "
     "bool"),
    (lambda p: p["spec"]["containers"][0].update(resources={"limits": {"memory": "32MMi"}}),
     "unable to parse quantity's suffix"),
    (lambda p: p["spec"]["containers"][0].update(resources={"limits": {"cpu": "lots"}}),
     "quantities must match the regular expression "
     "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"),
    (lambda p: p["metadata"].update(creationTimestamp="yesterday"),
     'parsing time "yesterday" as "2006-01-02T15:04:05Z07:00": cannot parse "yesterday" '
     'as "2006"'),
])
def test_type_errors_are_bad_requests(http: Callable[..., urllib3.BaseHTTPResponse],
                                      change: Callable[[dict[str, Any]], None],
                                      detail: str) -> None:
    pod = _pod("typed")
    change(pod)
    response = http("POST", PODS, pod)
    assert response.status == 400, response.data
    assert response.json() == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": _cannot_handle(detail), "reason": "BadRequest", "code": 400}


def test_a_put_is_decoded_too(http: Callable[..., urllib3.BaseHTTPResponse]) -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "put-me"},
          "data": {"k": "v"}}
    assert http("POST", "/api/v1/namespaces/default/configmaps", cm).status == 201
    cm["data"] = {"k": 5}
    response = http("PUT", "/api/v1/namespaces/default/configmaps/put-me", cm)
    assert response.status == 400
    assert response.json()["message"] == (
        'ConfigMap in version "v1" cannot be handled as a ConfigMap: json: cannot unmarshal '
        'number into Go struct field ConfigMap.data of type string')


# -- unknown fields follow fieldValidation --------------------------------------------


def _with_unknown(name: str) -> dict[str, Any]:
    pod = _pod(name)
    pod["spec"]["containers"][0]["imagee"] = "typo"
    pod["spec"]["foo"] = {"bar": 1}
    return pod


def test_unknown_fields_strict(http: Callable[..., urllib3.BaseHTTPResponse]) -> None:
    response = http("POST", PODS, _with_unknown("strict"), fieldValidation="Strict")
    assert response.status == 400
    assert response.json()["message"] == _cannot_handle(
        'strict decoding error: unknown field "spec.containers[0].imagee", '
        'unknown field "spec.foo"')


def test_unknown_fields_warn_by_default(http: Callable[..., urllib3.BaseHTTPResponse]) -> None:
    response = http("POST", PODS, _with_unknown("warned"))
    assert response.status == 201
    assert response.headers["Warning"] == (
        '299 - "unknown field \\"spec.containers[0].imagee\\"", '
        '299 - "unknown field \\"spec.foo\\""')
    # Dropped, as the API server's decoder drops them: never stored.
    stored = http("GET", f"{PODS}/warned").json()
    assert "foo" not in stored["spec"] and "imagee" not in stored["spec"]["containers"][0]


def test_unknown_fields_ignored(http: Callable[..., urllib3.BaseHTTPResponse]) -> None:
    response = http("POST", PODS, _with_unknown("ignored"), fieldValidation="Ignore")
    assert response.status == 201
    assert "Warning" not in response.headers
    assert "foo" not in response.json()["spec"]


def test_unknown_directive_is_refused(http: Callable[..., urllib3.BaseHTTPResponse]) -> None:
    response = http("POST", PODS, _pod("p"), fieldValidation="Loose")
    assert response.status == 422
    assert response.json()["message"] == (
        'CreateOptions.meta.k8s.io "" is invalid: fieldValidation: Unsupported value: '
        '"Loose": supported values: "", "Ignore", "Strict", "Warn"')


# -- patches: 422 on `patch` ------------------------------------------------------------


def test_patch_errors(http: Callable[..., urllib3.BaseHTTPResponse]) -> None:
    assert http("POST", PODS, _pod("patched")).status == 201
    # A strategic merge patch shows the patch, as Go prints a map.
    response = http("PATCH", f"{PODS}/patched", {"spec": {"foo": 1}},
                    "application/strategic-merge-patch+json", fieldValidation="Strict")
    assert response.status == 422
    status = response.json()
    message = ('Invalid value: "map[spec:map[foo:1]]": strict decoding error: '
               'unknown field "spec.foo"')
    assert status["message"] == f' "" is invalid: patch: {message}'
    assert status["details"] == {"causes": [
        {"reason": "FieldValueInvalid", "message": message, "field": "patch"}]}
    # A merge patch shows the patched object, as JSON.
    response = http("PATCH", f"{PODS}/patched", {"spec": {"priority": "high"}},
                    "application/merge-patch+json")
    assert response.status == 422
    message = response.json()["message"]
    assert message.startswith(' "" is invalid: patch: Invalid value: "{\\"apiVersion\\":\\"v1\\"')
    assert message.endswith('": json: cannot unmarshal string into Go struct field '
                            'PodSpec.spec.priority of type int32')
    # Status writes are decoded as well.
    response = http("PATCH", f"{PODS}/patched/status", {"status": {"phase": 3}},
                    "application/merge-patch+json")
    assert response.status == 422
    assert response.json()["message"].endswith(
        "json: cannot unmarshal number into Go struct field PodStatus.status.phase of type "
        "string")


# -- validation: 422 with field causes ------------------------------------------------


def test_missing_required_fields_are_invalid(http: Callable[..., urllib3.BaseHTTPResponse]
                                             ) -> None:
    pod = _pod("ports")
    pod["spec"]["containers"].append({"image": "registry.example/side:1",
                                      "ports": [{"name": "http"}]})
    response = http("POST", PODS, pod)
    assert response.status == 422
    status = response.json()
    assert status["message"] == (
        'Pod "ports" is invalid: [spec.containers[1].name: Required value, '
        'spec.containers[1].ports[0].containerPort: Required value]')
    assert status["details"]["causes"] == [
        {"reason": "FieldValueRequired", "message": "Required value",
         "field": "spec.containers[1].name"},
        {"reason": "FieldValueRequired", "message": "Required value",
         "field": "spec.containers[1].ports[0].containerPort"}]


def test_every_served_kind_is_checked(sim: Simulator,
                                      http: Callable[..., urllib3.BaseHTTPResponse]) -> None:
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "typo"}, "subjects": "everyone",
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                           "name": "view"}}
    response = http("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding)
    assert response.status == 400
    assert response.json()["message"] == (
        'ClusterRoleBinding in version "v1" cannot be handled as a ClusterRoleBinding: json: '
        'cannot unmarshal string into Go struct field ClusterRoleBinding.subjects of type '
        '[]v1.Subject')
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"},
            "spec": {"unschedulable": "no"}}
    assert http("POST", "/api/v1/nodes", node).status == 400
    # Kinds other helpers serve are found by group/version/kind alone.
    schemas = schemas_for(KUBE_VERSION)
    for group, version, kind in [("apps", "v1", "Deployment"), ("batch", "v1", "Job"),
                                 ("policy", "v1", "Eviction"), ("", "v1", "Secret")]:
        assert schemas.kind(group, version, kind) is not None, kind


def test_the_simulators_own_objects_are_valid(sim: Simulator, v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod("default", _pod("checked"))
    schemas = schemas_for(KUBE_VERSION)
    lists = [("Pod", v1.list_pod_for_all_namespaces), ("Node", v1.list_node),
             ("Namespace", v1.list_namespace)]
    with field_validation("Strict", "CreateOptions"):
        for kind, list_all in lists:
            items = list_all(_preload_content=False).json()["items"]
            assert items
            node = schemas.kind("", "v1", kind)
            assert node is not None
            for item in items:
                before = copy.deepcopy(item)
                decode(node, kind, "v1", item)
                assert item == before and required_errors(node, item) == []


def test_validation_is_fast() -> None:
    # Hundreds of pods per benchmark: one check must cost well under a millisecond.
    schemas = schemas_for(KUBE_VERSION)
    node = schemas.kind("", "v1", "Pod")
    assert node is not None
    pod = _pod("fast", restartPolicy="Always", tolerations=[
        {"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}])
    pod["spec"]["containers"][0].update(ports=[{"containerPort": 80}], env=[
        {"name": "A", "value": "1"}], resources={"requests": {"cpu": "100m"}})
    started = time.perf_counter()
    for _ in range(200):
        body = copy.deepcopy(pod)
        decode(node, "Pod", "v1", body)
        assert required_errors(node, body) == []
    assert (time.perf_counter() - started) / 200 < 0.005


def test_schema_release_follows_the_reported_version() -> None:
    assert schemas_for(KUBE_VERSION).release == "v1.30.0-local-strict"
    assert schemas_for("v1.29.9").release == "v1.29.0-local-strict"
    with pytest.raises(ValueError, match="no schemas"):
        schemas_for("v1.2.0")


def test_decode_outside_a_request_ignores_unknown_fields() -> None:
    # The simulator's controllers write without a request: Ignore, as no one would read a
    # warning; a type error is still an error.
    node = schemas_for(KUBE_VERSION).kind("", "v1", "ConfigMap")
    assert node is not None
    cm = {"metadata": {"name": "x"}, "data": {"a": "b"}, "extra": 1}
    decode(node, "ConfigMap", "v1", cm)
    assert cm == {"metadata": {"name": "x"}, "data": {"a": "b"}}
    with pytest.raises(ApiError) as e:
        decode(node, "ConfigMap", "v1", {"binaryData": {"a": "not base64!"}})
    assert e.value.message.endswith("illegal base64 data at input byte 3")


# -- kubectl ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def v1(sim: Simulator) -> Iterator[client.CoreV1Api]:
    with sim_client(sim) as api:
        yield client.CoreV1Api(api)


@pytest.fixture(scope="module")
def kubectl(sim: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Kubectl:
    run = kubectl_runner(tmp_path_factory.mktemp("kubectl-home"))
    return lambda *args, **kw: run(sim.kubeconfig, *args, **kw)


def _manifest(tmp_path: Path, pod: dict[str, Any]) -> str:
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(pod))
    return str(path)


@needs_kubectl
def test_kubectl_apply_invalid_manifest(kubectl: Kubectl, tmp_path: Path) -> None:
    pod = _pod("no-image")
    del pod["spec"]["containers"][0]["image"]
    result = kubectl("apply", "-f", _manifest(tmp_path, pod), check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        'The Pod "no-image" is invalid: spec.containers[0].image: Required value')


@needs_kubectl
def test_kubectl_apply_unknown_field_fails_strict_validation(kubectl: Kubectl,
                                                             tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, _with_unknown("typo"))
    result = kubectl("apply", "-f", manifest, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f'Error from server (BadRequest): error when creating "{manifest}": ' + _cannot_handle(
            'strict decoding error: unknown field "spec.containers[0].imagee", '
            'unknown field "spec.foo"'))
    # --validate=warn: created, kubectl printing the server's warnings.
    warned = kubectl("apply", "--validate=warn", "-f", manifest)
    assert warned.stdout.strip() == "pod/typo created"
    assert warned.stderr.splitlines() == ['Warning: unknown field "spec.containers[0].imagee"',
                                          'Warning: unknown field "spec.foo"']
    # Applying it again is a strategic merge patch: 422 on `patch`.
    again = kubectl("apply", "-f", manifest, check=False)
    assert again.returncode == 1
    assert again.stderr.startswith('The request is invalid: patch: Invalid value: "map[spec:')
    assert again.stderr.strip().endswith(
        'strict decoding error: unknown field "spec.containers[0].imagee", '
        'unknown field "spec.foo"')


@needs_kubectl
def test_kubectl_type_error(kubectl: Kubectl, tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, _pod("typed", terminationGracePeriodSeconds="30"))
    result = kubectl("create", "-f", manifest, check=False)
    assert result.stderr.strip() == (
        f'Error from server (BadRequest): error when creating "{manifest}": ' + _cannot_handle(
            "json: cannot unmarshal string into Go struct field PodSpec.spec."
            "terminationGracePeriodSeconds of type int64"))
