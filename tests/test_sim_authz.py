"""Authorization in the cluster simulator (e2e.sim): SelfSubjectAccessReviews and 403s.

Driven by the official client's AuthorizationV1Api, raw HTTPS and kubectl
(`auth can-i`, `create --raw`), against answers the real API server gives.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.sim import Simulator
from e2e.sim.protocol import Attributes, Decision
from tests.simulated import DEADLINE, kubectl_runner, needs_kubectl, sim_client

Kubectl = Callable[..., subprocess.CompletedProcess[str]]

#: What the custom authorizer below lets "bob" do: evict pods in "shop" only.
BOB = "bob"


def _bob_may_evict_in_shop(attrs: Attributes) -> Decision:
    if attrs.user.name != BOB:
        return Decision(True)
    if attrs.resource == "" and attrs.verb == "get":
        return Decision(True, reason="discovery is public")
    if attrs.resource == "selfsubjectaccessreviews" and attrs.verb == "create":
        return Decision(True)
    if (attrs.resource, attrs.subresource, attrs.verb, attrs.namespace) == \
            ("pods", "eviction", "create", "shop"):
        return Decision(True, reason="evictions in shop")
    return Decision(False, reason="bob may only evict in shop")


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    cluster = Simulator(tmp_path_factory.mktemp("sim") / "state", nodes=["node-a"],
                        authorizer=_bob_may_evict_in_shop)
    with cluster:
        yield cluster


@pytest.fixture(scope="module")
def bob_token(sim: Simulator) -> str:
    return sim.add_token(BOB, ["developers"])


def _ssar(**resource: str) -> dict[str, Any]:
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": resource}}


def test_review_through_the_official_client(sim: Simulator, bob_token: str) -> None:
    with sim_client(sim, bob_token) as api:
        authz = client.AuthorizationV1Api(api)
        allowed = authz.create_self_subject_access_review(_ssar(
            namespace="shop", verb="create", resource="pods", subresource="eviction"))
        assert allowed.status.allowed is True
        assert allowed.status.reason == "evictions in shop"
        assert allowed.spec.resource_attributes.subresource == "eviction"
        denied = authz.create_self_subject_access_review(_ssar(
            namespace="other", verb="create", resource="pods", subresource="eviction"))
        assert denied.status.allowed is False
        assert denied.status.reason == "bob may only evict in shop"
        assert not denied.status.denied
        path = authz.create_self_subject_access_review({"spec": {
            "nonResourceAttributes": {"path": "/version", "verb": "get"}}})
        assert path.status.allowed is True


def test_review_raw_answer(sim: Simulator, bob_token: str) -> None:
    http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(sim.ca.cert),
                               retries=False, timeout=DEADLINE,
                               headers={"Authorization": f"Bearer {bob_token}",
                                        "Content-Type": "application/json"})
    url = f"{sim.url}/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
    try:
        body = _ssar(namespace="other", verb="delete", resource="pods", name="web")
        response = http.request("POST", url, body=json.dumps(body).encode())
        assert response.status == 201
        assert response.json() == {
            **body, "metadata": {"creationTimestamp": None},
            "status": {"allowed": False, "reason": "bob may only evict in shop"}}
        # Neither or both attribute kinds: 422, as ValidateSelfSubjectAccessReviewSpec says.
        response = http.request("POST", url, body=b'{"spec": {}}')
        assert response.status == 422
        assert response.json()["message"] == (
            'SelfSubjectAccessReview.authorization.k8s.io "" is invalid: '
            'spec.resourceAttributes: Invalid value: "null": exactly one of '
            'nonResourceAttributes or resourceAttributes must be specified')
        # Reviews are not stored: there is nothing to list.
        response = http.request("GET", url, headers={"Authorization": f"Bearer {sim.token}"})
        assert response.status == 405
    finally:
        http.clear()


def test_forbidden_message_carries_the_reason(sim: Simulator, bob_token: str) -> None:
    with sim_client(sim, bob_token) as api, pytest.raises(ApiException) as e:
        client.CoreV1Api(api).delete_namespaced_pod("x", "ns")
    assert e.value.status == 403
    assert json.loads(e.value.body)["message"] == (
        'pods "x" is forbidden: User "bob" cannot delete resource "pods" in API group "" in '
        'the namespace "ns": bob may only evict in shop')


def test_discovery_serves_the_review(sim: Simulator) -> None:
    with sim_client(sim) as api:
        resources = client.AuthorizationV1Api(api).get_api_resources().resources
    assert [(r.name, r.verbs, r.namespaced) for r in resources] == [
        ("selfsubjectaccessreviews", ["create"], False)]


# -- kubectl ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kubectl_as(sim: Simulator, tmp_path_factory: pytest.TempPathFactory
               ) -> Callable[[str], Kubectl]:
    """kubectl_as(token)(*args): kubectl with a kubeconfig carrying `token`."""
    run = kubectl_runner(tmp_path_factory.mktemp("kubectl-home"))

    def as_user(token: str) -> Kubectl:
        with sim_client(sim, token):  # writes the kubeconfig copy for the token
            pass
        kubeconfig = sim.state_dir / f"kubeconfig-{token[:8]}"
        return lambda *args, **kw: run(kubeconfig, *args, **kw)

    return as_user


@needs_kubectl
def test_kubectl_auth_can_i(sim: Simulator, bob_token: str,
                            kubectl_as: Callable[[str], Kubectl]) -> None:
    admin, bob = kubectl_as(sim.token), kubectl_as(bob_token)
    assert admin("auth", "can-i", "create", "nodes/proxy").stdout.strip() == "yes"
    allowed = bob("auth", "can-i", "create", "pods", "--subresource=eviction", "-n", "shop")
    assert allowed.stdout.strip() == "yes"
    denied = bob("auth", "can-i", "create", "pods", "--subresource=eviction", "-n", "other",
                 check=False)
    assert denied.returncode == 1
    assert denied.stdout.strip() == "no - bob may only evict in shop"
    denied = bob("auth", "can-i", "create", "nodes/proxy", check=False)
    assert (denied.returncode, denied.stdout.split()[0]) == (1, "no")


@needs_kubectl
def test_kubectl_create_raw_review(sim: Simulator, kubectl_as: Callable[[str], Kubectl]
                                   ) -> None:
    review = _ssar(verb="get", resource="nodes", name="node-a")
    out = kubectl_as(sim.token)(
        "create", "--raw", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        "-f", "-", input=json.dumps(review)).stdout
    answer = json.loads(out)
    assert answer["kind"] == "SelfSubjectAccessReview"
    assert answer["spec"] == review["spec"]
    assert answer["status"] == {"allowed": True}
