"""authorization.k8s.io/v1: SelfSubjectAccessReview, "may I do this?".

`kubectl auth can-i VERB RESOURCE[/SUBRESOURCE] [-n NS]` posts one to
/apis/authorization.k8s.io/v1/selfsubjectaccessreviews and prints yes or no
(exit status 0 or 1). The API server answers, without storing anything, with
the review it was sent plus a `status` from its authorizer for the requesting
user: {allowed, denied?, reason?}. The simulator asks its own `Authorizer`,
the one every request goes through, so a review and the request it describes
always agree.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from e2e.nodes.protocol import Attributes, Authorizer, User, decide
from e2e.sim.errors import FieldError, bad_request, invalid
from e2e.sim.resources import Registry, ResourceType

__all__ = ["SELF_SUBJECT_ACCESS_REVIEWS", "register", "self_subject_access_review"]

GROUP = "authorization.k8s.io"

#: Served for discovery and routing; api.py answers its `create` with
#: self_subject_access_review() instead of storing it.
SELF_SUBJECT_ACCESS_REVIEWS = ResourceType(
    kind="SelfSubjectAccessReview", plural="selfsubjectaccessreviews",
    singular="selfsubjectaccessreview", namespaced=False, group=GROUP, version="v1",
    verbs=("create",),
)

_RESOURCE_KEYS = ("namespace", "verb", "group", "version", "resource", "subresource", "name")
_NON_RESOURCE_KEYS = ("path", "verb")


def register(registry: Registry) -> None:
    """Serve the authorization.k8s.io kinds in `registry`."""
    registry.add(SELF_SUBJECT_ACCESS_REVIEWS)


def _strings(section: Any, keys: tuple[str, ...], where: str) -> dict[str, str]:
    if not isinstance(section, Mapping):
        raise bad_request(f"{where} must be an object")
    values: dict[str, str] = {}
    for key in keys:
        value = section.get(key)
        if value is not None and not isinstance(value, str):
            raise bad_request(f"{where}.{key} must be a string")
        values[key] = value or ""
    return values


def _attributes(user: User, spec: Mapping[str, Any]) -> Attributes:
    resource, non_resource = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
    # The API server's ValidateSelfSubjectAccessReviewSpec, word for word.
    if resource is not None and non_resource is not None:
        raise invalid("SelfSubjectAccessReview", "", [FieldError(
            "Invalid", "spec.nonResourceAttributes",
            "cannot be specified in combination with resourceAttributes", non_resource)], GROUP)
    if resource is None and non_resource is None:
        raise invalid("SelfSubjectAccessReview", "", [FieldError(
            "Invalid", "spec.resourceAttributes",
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            "null")], GROUP)
    if resource is not None:
        r = _strings(resource, _RESOURCE_KEYS, "spec.resourceAttributes")
        return Attributes(user, r["verb"], r["group"], r["resource"], r["subresource"],
                          r["namespace"], r["name"])
    n = _strings(non_resource, _NON_RESOURCE_KEYS, "spec.nonResourceAttributes")
    return Attributes(user, n["verb"], path=n["path"])


def self_subject_access_review(authorizer: Authorizer, user: User, body: Any) -> dict[str, Any]:
    """The answered review (what a 201 carries) for `user`'s request `body`."""
    if not isinstance(body, Mapping):
        raise bad_request("the body must be a SelfSubjectAccessReview object")
    review = copy.deepcopy(dict(body))
    spec = review.get("spec")
    if not isinstance(spec, Mapping):
        spec = review["spec"] = {}
    decision = decide(authorizer, _attributes(user, spec))
    status: dict[str, Any] = {"allowed": decision.allowed}
    if decision.denied:
        status["denied"] = True
    if decision.reason:
        status["reason"] = decision.reason
    metadata = review.get("metadata") if isinstance(review.get("metadata"), dict) else {}
    review.update({
        "kind": SELF_SUBJECT_ACCESS_REVIEWS.kind,
        "apiVersion": SELF_SUBJECT_ACCESS_REVIEWS.api_version,
        # Never stored, so never given a creation time: the server sends null.
        "metadata": {**(metadata or {}), "creationTimestamp": None},
        "status": status,
    })
    return review
