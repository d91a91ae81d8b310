"""What the tool needs to run inside the cluster: a namespace, a ServiceAccount, its RBAC.

The ClusterRole is derived from the code, not written by hand: `API_CALLS`
says, for every function of the Kubernetes adapter that sends requests, the
RBAC it needs; a test checks that the table covers every such function, so
a new API call cannot ship without its permission, and that `migrate
doctor`'s checks ask for nothing the role does not grant. The role is
cluster-wide because pods are migrated in any namespace.

`migrate deploy` renders these objects (templates/incluster-rbac.yaml),
`migrate schedule drain` adds a CronJob (schedule.py); both validate every
object against the Kubernetes OpenAPI schema before printing or applying.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from migrate.adapters import kube
from migrate.pipeline.manifest import DEFAULT_K8S_VERSION
from migrate.pipeline.templating import fill
from migrate.validation import check_kubernetes, kubernetes_version

Obj = dict[str, Any]

DEFAULT_NAMESPACE = "migrate-system"
ACCOUNT = "migrate"
ROLE = "migrate"
TOOL_IMAGE_ANNOTATION = "migrate.dev/tool-image"
LABELS = {"app.kubernetes.io/name": "migrate", "app.kubernetes.io/managed-by": "migrate"}

#: (API group, resource[/subresource], verb)
Permission = tuple[str, str, str]

_POD_WATCH: tuple[Permission, ...] = (("", "pods", "list"), ("", "pods", "watch"))

#: Every function of migrate.adapters.kube that sends API requests -> the RBAC it needs
#: in-cluster. () marks requests every authenticated user may make (/version) or
#: functions that only call others listed here.
API_CALLS: dict[str, tuple[Permission, ...]] = {
    "server_version": (),  # /version: system:public-info-viewer
    "server_minor_version": (),
    "read_pod": (("", "pods", "get"),),
    "find_pod": (("", "pods", "get"),),
    "list_pods": (("", "pods", "list"),),
    "create_pod": (("", "pods", "create"),),
    # claims (migrate.dev/claimed-by); switch-over: deletion cost, held-back label
    "patch_pod": (("", "pods", "patch"),),
    "delete_pod": (("", "pods", "delete"),),
    "begin_pod_deletion": (("", "pods", "delete"),),
    "watch_pod": _POD_WATCH,
    "checkpoint_via_apiserver": (("", "nodes/proxy", "create"),),
    "list_nodes": (("", "nodes", "list"),),
    "read_node": (("", "nodes", "get"),),
    "read_node_recent": (("", "nodes", "get"),),
    "can_i": (("authorization.k8s.io", "selfsubjectaccessreviews", "create"),),
    "read_owner": (("apps", "replicasets", "get"), ("apps", "deployments", "get")),
    "create_job": (("batch", "jobs", "create"),),
    "watch_job": (("batch", "jobs", "list"), ("batch", "jobs", "watch")),
    "delete_job": (("batch", "jobs", "delete"),),
    "create_secret": (("", "secrets", "create"),),  # --build-on node: temporary credentials
    "delete_secret": (("", "secrets", "delete"),),
    "create_event": (("", "events", "create"),),
    # what the kubelet reports while the restored pod starts (pulling, restoring)
    "watch_events": (("", "events", "list"), ("", "events", "watch")),
    # migrate drain
    "patch_node": (("", "nodes", "patch"),),  # cordon, uncordon
    "list_nodes_matching": (("", "nodes", "list"),),
    "list_pdbs": (("policy", "poddisruptionbudgets", "list"),),
    "evict_pod": (("", "pods/eviction", "create"),),
}

#: The adapter functions `migrate prune` calls (pipeline/prune): a scheduled prune's
#: ServiceAccount gets exactly their permissions, and nothing of the drain's.
PRUNE_CALLS = ("read_node", "list_nodes", "list_pods", "create_job", "watch_job",
               "delete_job")
PRUNE_ACCOUNT = "migrate-prune"

#: Adapter functions the operator runs with their own credentials, never in-cluster.
#: (kubelet_config: `doctor --node`'s image-pull row, nodes/proxy get.)
OPERATOR_ONLY = frozenset({"apply_object", "read_object", "list_namespaces", "kubelet_config"})


def cluster_rules(permissions: Iterable[Permission] | None = None) -> list[Obj]:
    """RBAC PolicyRules granting ``permissions`` (default: everything in `API_CALLS`),
    one rule per API group and resource, sorted."""
    wanted = set(permissions if permissions is not None else
                 (p for perms in API_CALLS.values() for p in perms))
    verbs: dict[tuple[str, str], set[str]] = {}
    for group, resource, verb in wanted:
        verbs.setdefault((group, resource), set()).add(verb)
    return [{"apiGroups": [group], "resources": [resource], "verbs": sorted(found)}
            for (group, resource), found in sorted(verbs.items())]


def grants(rules: list[Obj], group: str, resource: str, verb: str) -> bool:
    """Whether ``rules`` allow ``verb`` on ``resource`` (``pods/eviction`` form) in ``group``."""
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
               for r in rules)


@dataclass(frozen=True)
class Deployment:
    """Where the tool lives in-cluster."""

    namespace: str = DEFAULT_NAMESPACE
    image: str | None = None  # recorded on the ServiceAccount, for `migrate schedule`

    @property
    def binding(self) -> str:
        """The ClusterRoleBinding's name: one per namespace the tool is deployed in."""
        return f"{ROLE}:{self.namespace}"


def deploy_objects(d: Deployment) -> list[Obj]:
    """Namespace, ServiceAccount, ClusterRole and ClusterRoleBinding, in apply order."""
    document: Obj = fill("incluster-rbac.yaml", {
        "namespace": d.namespace, "account": ACCOUNT, "role": ROLE, "binding": d.binding,
        "labels": dict(LABELS), "rules": cluster_rules(),
        "annotations": {TOOL_IMAGE_ANNOTATION: d.image} if d.image else None})
    items: list[Obj] = document["items"]
    return items


def prune_rules() -> list[Obj]:
    """The RBAC rules of `PRUNE_CALLS`."""
    return cluster_rules(p for call in PRUNE_CALLS for p in API_CALLS[call])


def prune_objects(d: Deployment) -> list[Obj]:
    """Namespace, ServiceAccount, ClusterRole and ClusterRoleBinding of a scheduled prune:
    its own account, with the prune's permissions only."""
    document: Obj = fill("incluster-rbac.yaml", {
        "namespace": d.namespace, "account": PRUNE_ACCOUNT, "role": PRUNE_ACCOUNT,
        "binding": f"{PRUNE_ACCOUNT}:{d.namespace}", "labels": dict(LABELS),
        "rules": prune_rules(), "annotations": None})
    items: list[Obj] = document["items"]
    return items


def target_version(requested: str | None) -> str:
    """The Kubernetes version to validate against: ``--k8s-version``, else the default."""
    return kubernetes_version(requested or DEFAULT_K8S_VERSION)


def check(objects: list[Obj], version: str) -> None:
    """Validate every object against Kubernetes ``version``'s OpenAPI schema (strict)."""
    for obj in objects:
        meta = obj.get("metadata") or {}
        where = f"{meta.get('namespace')}/" if meta.get("namespace") else ""
        check_kubernetes(obj, version, f"{obj.get('kind')} {where}{meta.get('name')}")


def apply(cluster: kube.Cluster, objects: list[Obj]) -> list[dict[str, str | None]]:
    """Create or update each object, in order; what happened to each (idempotent;
    schemas/apply.schema.json: a cluster-scoped object's namespace is null)."""
    return [{"kind": obj["kind"], "namespace": obj["metadata"].get("namespace"),
             "name": obj["metadata"]["name"],
             "action": kube.apply_object(cluster, obj)} for obj in objects]


def service_account_image(cluster: kube.Cluster, namespace: str) -> str | None:
    """The tool image `migrate deploy --image` recorded in ``namespace``, if any."""
    account = kube.read_object(cluster, "ServiceAccount", namespace, ACCOUNT)
    if account is None:
        return None
    image = ((account.get("metadata") or {}).get("annotations") or {}).get(
        TOOL_IMAGE_ANNOTATION)
    return str(image) if image else None
