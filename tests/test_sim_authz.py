"""Authorization in the cluster simulator (e2e.sim): RBAC, SelfSubjectAccessReviews, 403s.

Driven by the official client (AuthorizationV1Api, RbacAuthorizationV1Api),
raw HTTPS and kubectl (`auth can-i`, `create --raw`, `apply`), against the
answers and messages the real API server gives.
"""

from __future__ import annotations

import json
import re
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from e2e.nodes.protocol import Attributes, Decision, User
from e2e.sim import Simulator
from e2e.sim.__main__ import main as sim_main
from e2e.sim.rbac_authorizer import rule_allows, service_account_user
from e2e.sim.users import UserSpec, parse_users
from tests.simulated import DEADLINE, kubectl_runner, needs_kubectl, sim_client

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
RBAC = "rbac.authorization.k8s.io"
REPO = Path(__file__).resolve().parent.parent

#: bob may read pods and evict them in "shop", and read nodes anywhere.
BOB_RULES = [
    {"apiGroups": [""], "resources": ["pods", "pods/eviction"],
     "verbs": ["get", "list", "create"], "namespaces": ["shop"]},
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list"]},
]


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    cluster = Simulator(tmp_path_factory.mktemp("sim") / "state", nodes=["node-a"],
                        users=[UserSpec("bob", ("developers",), tuple(BOB_RULES))])
    with cluster:
        yield cluster


@pytest.fixture(scope="module")
def bob(sim: Simulator) -> Iterator[client.ApiClient]:
    with sim_client(sim, _token(sim, "bob")) as api:
        yield api


@pytest.fixture(scope="module")
def admin(sim: Simulator) -> Iterator[client.ApiClient]:
    with sim_client(sim) as api:
        yield api


def _token(sim: Simulator, user: str) -> str:
    kubeconfig = yaml.safe_load(sim.user_kubeconfig(user).read_text())
    token: str = kubeconfig["users"][0]["user"]["token"]
    return token


def _ssar(**resource: str) -> dict[str, Any]:
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": resource}}


def _status(e: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(str(e.body))
    return body


def _review(api: client.ApiClient, body: dict[str, Any]) -> Any:
    return client.AuthorizationV1Api(api).create_self_subject_access_review(body).status


# -- SelfSubjectAccessReview -------------------------------------------------------------


def test_review_through_the_official_client(bob: client.ApiClient) -> None:
    allowed = _review(bob, _ssar(namespace="shop", verb="create", resource="pods",
                                 subresource="eviction"))
    assert allowed.allowed is True
    assert allowed.reason == ('RBAC: allowed by RoleBinding "sim:user:bob/shop" of Role '
                              '"sim:user:bob" to User "bob"')
    denied = _review(bob, _ssar(namespace="other", verb="create", resource="pods",
                                subresource="eviction"))
    assert (denied.allowed, denied.denied, denied.reason) == (False, None, None)
    # Cluster-wide rules hold in every namespace; nodes are cluster-scoped anyway.
    assert _review(bob, _ssar(verb="list", resource="nodes")).allowed is True
    assert _review(bob, _ssar(verb="delete", resource="nodes", name="node-a")).allowed is False
    # The bootstrap policy: discovery for every authenticated user.
    version = _review(bob, {"spec": {"nonResourceAttributes": {"path": "/version",
                                                                "verb": "get"}}})
    assert version.allowed is True
    assert version.reason == ('RBAC: allowed by ClusterRoleBinding "system:discovery" of '
                              'ClusterRole "system:discovery" to Group "system:authenticated"')


def test_review_raw_answer(sim: Simulator) -> None:
    http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(sim.ca.cert),
                               retries=False, timeout=DEADLINE,
                               headers={"Authorization": f"Bearer {_token(sim, 'bob')}",
                                        "Content-Type": "application/json"})
    url = f"{sim.url}/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
    try:
        body = _ssar(namespace="other", verb="delete", resource="pods", name="web")
        response = http.request("POST", url, body=json.dumps(body).encode())
        assert response.status == 201
        assert response.json() == {**body, "metadata": {"creationTimestamp": None},
                                   "status": {"allowed": False}}
        # Neither or both attribute kinds: 422, as ValidateSelfSubjectAccessReviewSpec says.
        response = http.request("POST", url, body=b'{"spec": {}}')
        assert response.status == 422
        assert response.json()["message"] == (
            'SelfSubjectAccessReview.authorization.k8s.io "" is invalid: '
            'spec.resourceAttributes: Invalid value: "null": exactly one of '
            'nonResourceAttributes or resourceAttributes must be specified')
        # Decoded like any body: kubectl's fieldValidation=Strict refuses a typo.
        typo = _ssar(verb="get", resource="pods", verbb="list")
        response = http.request("POST", f"{url}?fieldValidation=Strict",
                                body=json.dumps(typo).encode())
        assert (response.status, response.json()["message"]) == (400, (
            'SelfSubjectAccessReview in version "v1" cannot be handled as a '
            'SelfSubjectAccessReview: strict decoding error: unknown field '
            '"spec.resourceAttributes.verbb"'))
        # Reviews are not stored: there is nothing to list, even for the admin.
        response = http.request("GET", url, headers={"Authorization": f"Bearer {sim.token}"})
        assert response.status == 405
    finally:
        http.clear()


def test_discovery_serves_the_review_and_rbac(admin: client.ApiClient) -> None:
    resources = client.AuthorizationV1Api(admin).get_api_resources().resources
    assert [(r.name, r.verbs, r.namespaced) for r in resources] == [
        ("selfsubjectaccessreviews", ["create"], False)]
    rbac = client.RbacAuthorizationV1Api(admin).get_api_resources().resources
    assert sorted((r.name, r.namespaced) for r in rbac) == [
        ("clusterrolebindings", False), ("clusterroles", False), ("rolebindings", True),
        ("roles", True)]


# -- RBAC decisions through real requests -------------------------------------------------


def test_namespaced_grant_allows_only_its_namespace(sim: Simulator, bob: client.ApiClient,
                                                    admin: client.ApiClient) -> None:
    pod = {"metadata": {"name": "web"},
           "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}}
    client.CoreV1Api(admin).create_namespaced_pod("shop", pod)
    v1 = client.CoreV1Api(bob)
    assert v1.read_namespaced_pod("web", "shop").metadata.name == "web"
    with pytest.raises(ApiException) as e:
        v1.list_namespaced_pod("default")
    assert e.value.status == 403
    assert _status(e.value)["message"] == (
        'pods is forbidden: User "bob" cannot list resource "pods" in API group "" in the '
        'namespace "default"')
    # Across all namespaces is the cluster scope: a Role in one namespace does not cover it.
    with pytest.raises(ApiException) as e:
        v1.list_pod_for_all_namespaces()
    assert _status(e.value)["message"] == (
        'pods is forbidden: User "bob" cannot list resource "pods" in API group "" at the '
        'cluster scope')
    with pytest.raises(ApiException) as e:
        v1.delete_namespaced_pod("web", "shop")
    assert _status(e.value)["message"] == (
        'pods "web" is forbidden: User "bob" cannot delete resource "pods" in API group "" '
        'in the namespace "shop"')
    assert _status(e.value)["details"] == {"name": "web", "kind": "pods"}


def test_subresources_are_granted_separately(sim: Simulator, bob: client.ApiClient) -> None:
    v1 = client.CoreV1Api(bob)
    with pytest.raises(ApiException) as e:
        v1.read_namespaced_pod_status("web", "shop")
    assert _status(e.value)["message"] == (
        'pods "web" is forbidden: User "bob" cannot get resource "pods/status" in API group '
        '"" in the namespace "shop"')
    with pytest.raises(ApiException) as e:
        v1.connect_get_node_proxy_with_path("node-a", "healthz")
    assert _status(e.value)["message"] == (
        'nodes "node-a" is forbidden: User "bob" cannot get resource "nodes/proxy" in API '
        'group "" at the cluster scope')
    # Authorization comes before routing: bob is refused, not told what exists.
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "web"}}
    with pytest.raises(ApiException) as e:
        v1.create_namespaced_pod_eviction("web", "other", eviction)
    assert e.value.status == 403
    assert _status(e.value)["message"] == (
        'pods "web" is forbidden: User "bob" cannot create resource "pods/eviction" in API '
        'group "" in the namespace "other"')


def test_bindings_applied_later_count_at_once(sim: Simulator, admin: client.ApiClient) -> None:
    rbac = client.RbacAuthorizationV1Api(admin)
    carol = sim.add_token("carol", ["auditors"])
    with sim_client(sim, carol) as api:
        with pytest.raises(ApiException):
            client.CoreV1Api(api).list_node()
        # A Group subject, a ClusterRole with "*/status" and a resourceNames limit.
        rbac.create_cluster_role({"metadata": {"name": "status-reader"}, "rules": [
            {"apiGroups": [""], "resources": ["*/status"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"],
             "resourceNames": ["node-a"]}]})
        rbac.create_cluster_role_binding({
            "metadata": {"name": "auditors-status"},
            "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "status-reader"},
            "subjects": [{"apiGroup": RBAC, "kind": "Group", "name": "auditors"}]})
        v1 = client.CoreV1Api(api)
        assert v1.read_node("node-a").metadata.name == "node-a"
        assert v1.read_node_status("node-a").metadata.name == "node-a"
        with pytest.raises(ApiException):
            v1.list_node()  # resourceNames never cover a list
        review = _review(api, _ssar(verb="get", resource="namespaces", subresource="status",
                                    name="default"))
        assert review.reason == ('RBAC: allowed by ClusterRoleBinding "auditors-status" of '
                                 'ClusterRole "status-reader" to Group "auditors"')


def test_binding_to_a_missing_role_explains_the_refusal(sim: Simulator,
                                                        admin: client.ApiClient) -> None:
    client.RbacAuthorizationV1Api(admin).create_namespaced_role_binding("default", {
        "metadata": {"name": "dangling"},
        "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "nope"},
        "subjects": [{"kind": "ServiceAccount", "name": "robot"}]})
    user = service_account_user("default", "robot")
    with sim_client(sim, sim.add_token(user.name, user.groups)) as api, \
            pytest.raises(ApiException) as e:
        client.CoreV1Api(api).list_namespaced_config_map("default")
    assert _status(e.value)["message"] == (
        'configmaps is forbidden: User "system:serviceaccount:default:robot" cannot list '
        'resource "configmaps" in API group "" in the namespace "default": RBAC: '
        'clusterrole.rbac.authorization.k8s.io "nope" not found')


def test_rbac_objects_are_validated(sim: Simulator, admin: client.ApiClient) -> None:
    # Raw: the official client refuses to send a rule without verbs.
    http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(sim.ca.cert),
                               retries=False, timeout=DEADLINE,
                               headers={"Authorization": f"Bearer {sim.token}"})
    bad = {"metadata": {"name": "bad"}, "rules": [
        {"apiGroups": [""], "resources": ["pods"]}, {"verbs": ["get"]}]}
    response = http.request("POST", f"{sim.url}/apis/{RBAC}/v1/clusterroles", json=bad)
    http.clear()
    assert response.status == 422
    assert response.json()["message"] == (
        'ClusterRole.rbac.authorization.k8s.io "bad" is invalid: [rules[0].verbs: Required '
        'value: verbs must contain at least one value, rules[1].apiGroups: Required value: '
        'resource rules must supply at least one api group, rules[1].resources: Required '
        'value: resource rules must supply at least one resource]')
    binding = {"metadata": {"name": "b"},
               "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "view"},
               "subjects": [{"apiGroup": RBAC, "kind": "User", "name": "dave"}]}
    rbac = client.RbacAuthorizationV1Api(admin)
    rbac.create_namespaced_role_binding("default", binding)
    with pytest.raises(ApiException) as e:
        rbac.patch_namespaced_role_binding("b", "default", {"roleRef": {"name": "edit"}})
    assert _status(e.value)["details"]["causes"][0]["field"] == "roleRef"
    assert "cannot change roleRef" in _status(e.value)["message"]


def test_bootstrap_policy(admin: client.ApiClient) -> None:
    rbac = client.RbacAuthorizationV1Api(admin)
    roles = {r.metadata.name for r in rbac.list_cluster_role().items}
    assert {"cluster-admin", "system:discovery", "system:basic-user",
            "system:public-info-viewer"} <= roles
    masters = rbac.read_cluster_role_binding("cluster-admin").subjects
    assert [(s.kind, s.name) for s in masters] == [("Group", "system:masters")]


# -- the rule matcher and the users config ----------------------------------------------


@pytest.mark.parametrize(("rule", "attrs", "allowed"), [
    ({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
     dict(verb="delete", group="apps", resource="deployments", namespace="x"), True),
    ({"apiGroups": ["apps"], "resources": ["*/scale"], "verbs": ["update"]},
     dict(verb="update", group="apps", resource="deployments", subresource="scale"), True),
    ({"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["update"]},
     dict(verb="update", group="apps", resource="deployments", subresource="scale"), False),
    ({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
     dict(verb="get", group="apps", resource="pods"), False),
    ({"nonResourceURLs": ["/apis/*"], "verbs": ["get"]}, dict(verb="get", path="/apis/x/v1"),
     True),
    ({"nonResourceURLs": ["/apis"], "verbs": ["get"]}, dict(verb="get", path="/apis/x"), False),
])
def test_rule_matching(rule: dict[str, Any], attrs: dict[str, str], allowed: bool) -> None:
    assert rule_allows(Attributes(User("u"), **attrs), rule) is allowed


def test_users_config_is_checked() -> None:
    users = parse_users([{"name": "bob", "token": "t", "groups": ["g"], "rules": BOB_RULES}])
    assert users == [UserSpec("bob", ("g",), tuple(BOB_RULES), "t")]
    for bad, message in [
        ([{"name": "bob", "rules": [{"verbs": ["get"], "resources": ["pods"]}]}],
         "rules[0]: rule.apiGroups: Required value"),
        ([{"name": "bob", "role": "admin"}], "unknown key(s) role"),
        ([{"name": "bob"}, {"name": "bob"}], "users listed twice: bob"),
        ([{"name": "bob", "rules": [{"verbs": "get", "nonResourceURLs": ["/x"]}]}],
         "expected a list of strings"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_users(bad)


def test_command_line_users(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_file = tmp_path / "sim.yaml"
    config_file.write_text(yaml.safe_dump({"users": [{"name": "bob", "rules": [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]}]}))
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "e2e.sim", "--state", str(state), "--nodes", "n1",
         "--config", str(config_file)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "no ready line within 30 s"
        assert proc.stdout.readline().startswith("ready https://127.0.0.1:")
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(state / "kubeconfig-bob"),
                                client_configuration=cfg)
        with client.ApiClient(cfg) as api:
            assert client.CoreV1Api(api).list_pod_for_all_namespaces().items == []
            with pytest.raises(ApiException) as e:
                client.CoreV1Api(api).list_node()
        assert e.value.status == 403
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=DEADLINE) == 0
    # A bad rule is refused before anything starts.
    config_file.write_text(yaml.safe_dump({"users": [{"name": "bob", "rules": [
        {"resources": ["pods"], "verbs": ["list"]}]}]}))
    assert sim_main(["--state", str(state), "--config", str(config_file)]) == 2
    assert "rules[0]: rule.apiGroups: Required value" in capsys.readouterr().err


def test_custom_authorizer_reason_reaches_the_403(tmp_path: Path) -> None:
    def refuse_with_reason(attrs: Attributes) -> Decision:
        return Decision(attrs.user.name != "eve", reason="eve is on leave")

    with Simulator(tmp_path / "state", nodes=["node-a"], authorizer=refuse_with_reason) as sim, \
            sim_client(sim, sim.add_token("eve")) as api, pytest.raises(ApiException) as e:
        client.CoreV1Api(api).read_namespace("default")
    assert _status(e.value)["message"] == (
        'namespaces "default" is forbidden: User "eve" cannot get resource "namespaces" in '
        'API group "" at the cluster scope: eve is on leave')


# -- kubectl ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kubectl(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], Kubectl]:
    """kubectl(kubeconfig)(*args): kubectl with its caches in a private HOME."""
    run = kubectl_runner(tmp_path_factory.mktemp("kubectl-home"))
    return lambda kubeconfig: lambda *args, **kw: run(kubeconfig, *args, **kw)


@needs_kubectl
def test_kubectl_auth_can_i(sim: Simulator, kubectl: Callable[[Path], Kubectl]) -> None:
    admin, bob = kubectl(sim.kubeconfig), kubectl(sim.user_kubeconfig("bob"))
    assert admin("auth", "can-i", "create", "nodes/proxy").stdout.strip() == "yes"
    allowed = bob("auth", "can-i", "create", "pods", "--subresource=eviction", "-n", "shop")
    assert allowed.stdout.strip() == "yes"
    for args in (["create", "pods", "--subresource=eviction", "-n", "other"],
                 ["create", "nodes/proxy"], ["delete", "pods", "-n", "shop"]):
        denied = bob("auth", "can-i", *args, check=False)
        assert (denied.returncode, denied.stdout.strip()) == (1, "no"), args


@needs_kubectl
def test_kubectl_create_raw_review(sim: Simulator, kubectl: Callable[[Path], Kubectl]) -> None:
    review = _ssar(verb="get", resource="nodes", name="node-a")
    out = kubectl(sim.user_kubeconfig("bob"))(
        "create", "--raw", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        "-f", "-", input=json.dumps(review)).stdout
    answer = json.loads(out)
    assert answer["kind"] == "SelfSubjectAccessReview"
    assert answer["spec"] == review["spec"]
    assert answer["status"] == {"allowed": True, "reason": (
        'RBAC: allowed by ClusterRoleBinding "sim:user:bob" of ClusterRole "sim:user:bob" to '
        'User "bob"')}


@needs_kubectl
def test_kubectl_applies_rbac_manifests(sim: Simulator, kubectl: Callable[[Path], Kubectl],
                                        tmp_path: Path) -> None:
    manifest = tmp_path / "rbac.yaml"
    manifest.write_text(yaml.safe_dump_all([
        {"apiVersion": f"{RBAC}/v1", "kind": "Role",
         "metadata": {"name": "cm-writer", "namespace": "default"},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]}]},
        {"apiVersion": f"{RBAC}/v1", "kind": "RoleBinding",
         "metadata": {"name": "bob-cm-writer", "namespace": "default"},
         "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": "cm-writer"},
         "subjects": [{"apiGroup": RBAC, "kind": "User", "name": "bob"}]},
    ]))
    bob = kubectl(sim.user_kubeconfig("bob"))
    assert bob("auth", "can-i", "create", "configmaps", "-n", "default",
               check=False).returncode == 1
    out = kubectl(sim.kubeconfig)("apply", "-f", str(manifest)).stdout.splitlines()
    assert out == [f"role.{RBAC}/cm-writer created", f"rolebinding.{RBAC}/bob-cm-writer created"]
    assert bob("auth", "can-i", "create", "configmaps", "-n", "default").stdout.strip() == "yes"
