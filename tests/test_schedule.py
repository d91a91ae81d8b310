"""`migrate deploy` and `migrate schedule drain`: the tool's RBAC and CronJob, applied and run.

The ClusterRole is checked against the code (every API call of the Kubernetes
adapter has its permission, doctor asks for nothing more), the rendered
objects against the Kubernetes schema, `--apply` against the real control
plane (twice: nothing changes the second time), and the CronJob by firing it
as an operator would, with a Job made from its template (`kubectl create job
--from=cronjob/NAME`: the real CronJob controller keeps the real clock); the
Job runs the tool's image for real on a node agent (e2e/nodes/toolrun.py) as
the `migrate` ServiceAccount, in-cluster, its rights the real RBAC's.
"""

from __future__ import annotations

import ast
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes_validate import utils as kv

from e2e.cluster.launcher import ControlPlane
from e2e.cluster.world import Cluster
from e2e.nodes import RegistryConfig
from migrate.pipeline import incluster
from migrate.pipeline.doctor import PERMISSIONS
from tests.cluster import Kubectl, node_agents, wait_for
from tests.conftest import REPO, Result
from tests.registries import RegistryUnderTest
from tests.test_migrate_pod import make_pod

TOOL = "localhost/migrate:test"
Cli = Callable[..., Result]


# -- the ClusterRole follows the code -------------------------------------------------------


def api_functions() -> dict[str, set[str]]:
    """Public functions of the kube adapter -> the module functions they call."""
    out = {}
    for module in sorted((REPO / "migrate/adapters/kube").glob("*.py")):
        for node in ast.parse(module.read_text()).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                out[node.name] = {n.func.id for n in ast.walk(node)
                                  if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    return out


def test_every_api_call_has_its_permission() -> None:
    functions = api_functions()
    # The senders, not API calls: each API call's permission is checked where it is used.
    generic = {"call", "send", "request_json", "watch_object", "create_once", "delete_object",
               "deletion", "watch_stream"}
    sends = {*generic, *incluster.API_CALLS, *incluster.OPERATOR_ONLY}
    talking = {name for name, calls in functions.items() if calls & sends} - generic
    assert talking - set(incluster.API_CALLS) - incluster.OPERATOR_ONLY == set()
    assert set(incluster.API_CALLS) - set(functions) == set()  # nothing granted for nothing


def test_doctor_checks_only_what_the_role_grants() -> None:
    rules = incluster.cluster_rules()
    for verb, resource, sub, group, _, _ in PERMISSIONS:
        assert incluster.grants(rules, group, f"{resource}/{sub}" if sub else resource, verb)


def test_the_role_is_minimal() -> None:
    rules = {(r["apiGroups"][0], r["resources"][0]): r["verbs"]
             for r in incluster.cluster_rules()}
    assert rules[("", "pods")] == ["create", "delete", "get", "list", "patch", "watch"]
    assert rules[("", "secrets")] == ["create", "delete"]  # never get, list or watch
    assert rules[("batch", "jobs")] == ["create", "delete", "list", "watch"]
    assert ("", "nodes/proxy") in rules and ("rbac.authorization.k8s.io", "*") not in rules
    assert all("*" not in verbs for verbs in rules.values())


# -- rendering --------------------------------------------------------------------------------


def documents(r: Result) -> list[dict[str, Any]]:
    assert r.code == 0, r.err
    return list(yaml.safe_load_all(r.out))


def test_deploy_renders_valid_objects(cli: Cli) -> None:
    objects = documents(cli("deploy", "--namespace", "ops", "--image", TOOL))
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("Namespace", "ops"), ("ServiceAccount", "migrate"), ("ClusterRole", "migrate"),
        ("ClusterRoleBinding", "migrate:ops")]
    for obj in objects:
        kv.validate(obj, "1.30", strict=True)
    assert objects[1]["metadata"]["annotations"] == {"migrate.dev/tool-image": TOOL}
    assert objects[3]["subjects"] == [{"kind": "ServiceAccount", "name": "migrate",
                                       "namespace": "ops"}]
    assert objects[2]["rules"] == incluster.cluster_rules()
    listed = cli("deploy", "-o", "json").json()
    assert (listed["kind"], len(listed["items"])) == ("List", 4)


def test_schedule_renders_the_cronjob(cli: Cli) -> None:
    objects = documents(cli("schedule", "drain", "node-a", "--cron", "0 2 * * 6", "--image",
                            TOOL, "--registry", "registry.example:5000/ckpt", "--registry-secret",
                            "regcred", "--time-zone", "Europe/Berlin", "--", "--timeout", "60"))
    assert [o["kind"] for o in objects] == ["Namespace", "ServiceAccount", "ClusterRole",
                                            "ClusterRoleBinding", "CronJob"]
    job = objects[-1]
    kv.validate(job, "1.30", strict=True)
    assert (job["metadata"]["name"], job["spec"]["schedule"], job["spec"]["timeZone"]) == (
        "migrate-drain-node-a", "0 2 * * 6", "Europe/Berlin")
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == ["drain", "node-a", "--registry", "registry.example:5000/ckpt",
                                 "--on-interrupt", "rollback", "--build-on", "node",
                                 "--tool-image", TOOL, "--timeout", "60"]
    # the journal goes with the pod: after SIGTERM, the time to undo what is in flight
    # (a stage may wait up to --timeout first)
    assert pod["terminationGracePeriodSeconds"] == 60 + 120
    assert pod["serviceAccountName"] == "migrate" and container["image"] == TOOL
    assert {"name": "REGISTRY_AUTH_FILE", "value": "/run/migrate/registry/.dockerconfigjson"} \
        in container["env"]
    assert {"name": "registry-auth", "secret": {"secretName": "regcred"}} in pod["volumes"]
    term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["node-a"]


def test_a_scheduled_drain_keeps_the_interruption_it_is_given(cli: Cli) -> None:
    pod = documents(cli("schedule", "drain", "node-a", "--cron", "0 2 * * 6", "--image", TOOL,
                        "--", "--on-interrupt", "stop"))[-1]["spec"]["jobTemplate"]["spec"][
        "template"]["spec"]
    assert pod["containers"][0]["args"].count("--on-interrupt") == 1
    assert pod["terminationGracePeriodSeconds"] == 300 + 120  # drain's default --timeout


@pytest.mark.parametrize(("args", "message"), [
    (["--cron", "0 2 * *", "--image", TOOL], "error: --cron '0 2 * *' is not a cron schedule"),
    (["--cron", "0 2 * * 6"], "error: say which image runs the drain: --image REF"),
    (["--cron", "0 2 * * 6", "--image", TOOL, "--name", "x" * 53],
     "error: --name 'xxxxx"),
])
def test_schedule_usage_errors(cli: Cli, monkeypatch: pytest.MonkeyPatch, args: list[str],
                               message: str) -> None:
    monkeypatch.delenv("MIGRATE_TOOL_IMAGE", raising=False)
    r = cli("schedule", "drain", "node-a", *args)
    assert r.code == 2 and r.err.startswith(message), r.err


@pytest.mark.parametrize("where", [["--registry", "127.0.0.1:5000/drains"],
                                   ["--", "--registry=localhost:5000/drains"]])
def test_schedule_refuses_a_registry_no_pod_reaches(cli: Cli, where: list[str]) -> None:
    r = cli("schedule", "drain", "node-a", "--cron", "0 2 * * 6", "--image", TOOL, *where)
    registry = where[-1].split("=")[-1].split("/")[0]
    assert (r.code, r.err.splitlines()[:2]) == (2, [
        f"error: a scheduled drain runs in a pod, which cannot reach the registry {registry}: "
        "a loopback address is the pod's own",
        "hint: give --registry an address or name the cluster's pods reach"])


def test_schedule_refuses_encryption_it_cannot_do(cli: Cli) -> None:
    r = cli("schedule", "drain", "node-a", "--cron", "0 2 * * 6", "--image", TOOL, "--",
            "--encrypt-for", "jwe:/etc/keys/node-b.pem")
    assert (r.code, r.out, r.err) == (2, "", (
        "error: drain option --encrypt-for: a scheduled drain runs in a pod that cannot read "
        "key files on this machine\n"
        "hint: encrypt in a drain run from here (`migrate drain NODE --encrypt-for jwe:KEY`); "
        "scheduled drains push unencrypted images\n"))


@pytest.mark.parametrize(("command", "option", "why", "hint"), [
    ("drain", "--creds", "credentials on its command line would be stored in the CronJob, "
     "readable by anyone who may read it",
     "put them in a dockerconfigjson Secret and give --registry-secret NAME"),
    ("prune", "--creds", "credentials on its command line would be stored in the CronJob, "
     "readable by anyone who may read it",
     "put them in a dockerconfigjson Secret and give --registry-secret NAME"),
    ("drain", "--authfile", "a scheduled run cannot read credential files on this machine",
     "put them in a dockerconfigjson Secret and give --registry-secret NAME"),
    ("prune", "--cert-dir", "a scheduled run cannot read certificate directories on this "
     "machine", "the tool's image must trust the registry (a CA in its system store)"),
    ("drain", "--kubeconfig", "a scheduled run talks to its own cluster with its "
     "ServiceAccount", "leave it out: `schedule --apply` sets up the RBAC it needs"),
])
def test_schedule_refuses_what_only_this_machine_has(cli: Cli, command: str, option: str,
                                                     why: str, hint: str) -> None:
    """Passed-through options went into the CronJob's arguments as they were: `--creds
    USER:PASSWORD` printed in its YAML and stored in the cluster with --apply."""
    secret = "bob:S3cretPw"
    what = ["--older-than", "7d"] if command == "prune" else []
    for form in ([option, secret], [f"{option}={secret}"]):
        r = cli("schedule", command, *(["node-a"] if command == "drain" else []), "--cron",
                "0 2 * * 6", "--image", TOOL, "--", *what, *form)
        assert (r.code, r.out, r.err) == (2, "", f"error: {command} option {option}: {why}\n"
                                          f"hint: {hint}\n")


def test_schedule_checks_drain_options(cli: Cli) -> None:
    r = cli("schedule", "drain", "node-a", "--cron", "0 2 * * 6", "--image", TOOL, "--",
            "--no-such-option")
    assert r.code == 2 and r.err.startswith("error: drain option: No such option"), r.err


# -- in the cluster ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(real_cp: ControlPlane, tmp_path_factory: pytest.TempPathFactory,
            pod_plain_registry: RegistryUnderTest, cp_kubectl: Kubectl) -> Iterator[Cluster]:
    registries = RegistryConfig(insecure=(pod_plain_registry.host,))
    with node_agents(real_cp, tmp_path_factory.mktemp("nodes"), tool_images=(TOOL,),
                     start_latency=0.02, stop_latency=0.02, tool_timeout=120,
                     registries=registries) as world:
        try:
            yield world
        finally:  # what `migrate deploy` and the tests made outside namespace default, waited
            # for: the next module may create migrate-system again
            cp_kubectl(real_cp.admin_kubeconfig, "delete", "--ignore-not-found", "--timeout=120s",
                       "namespace/migrate-system", "namespace/elsewhere",
                       "clusterrole/migrate", "clusterrolebinding/migrate:migrate-system")


def applied(r: Result) -> list[tuple[str, str]]:
    assert r.code == 0, r.err
    return [(f"{a['kind']}/{a['name']}", a["action"]) for a in r.json()]


def test_deploy_applies_and_applies_again(cli: Cli, cluster: Cluster) -> None:
    args = ("deploy", "--apply", "--kubeconfig", cluster.kubeconfig, "-o", "json")
    first = applied(cli(*args))
    assert first == [("Namespace/migrate-system", "created"),
                     ("ServiceAccount/migrate", "created"), ("ClusterRole/migrate", "created"),
                     ("ClusterRoleBinding/migrate:migrate-system", "created")]
    assert [action for _, action in applied(cli(*args))] == ["unchanged"] * 4
    again = applied(cli(*args, "--image", TOOL))  # records the image on the account
    assert again[1] == ("ServiceAccount/migrate", "configured")
    lines = cli("deploy", "--apply", "--kubeconfig", cluster.kubeconfig, "--image", TOOL).out
    assert lines.splitlines()[0] == "namespace/migrate-system unchanged"


def test_schedule_applies_with_the_recorded_image(cli: Cli, cluster: Cluster,
                                                  api: client.ApiClient) -> None:
    cli("deploy", "--apply", "--kubeconfig", cluster.kubeconfig, "--image", TOOL)
    r = applied(cli("schedule", "drain", "node-a", "--cron", "0 2 * * 6", "--apply",
                    "--kubeconfig", cluster.kubeconfig, "-o", "json"))
    assert r[-1] == ("CronJob/migrate-drain-node-a", "created")
    assert [action for _, action in r[:-1]] == ["unchanged"] * 4
    cronjob = client.BatchV1Api(api).read_namespaced_cron_job("migrate-drain-node-a",
                                                              "migrate-system")
    assert cronjob.spec.job_template.spec.template.spec.containers[0].image == TOOL
    r = applied(cli("schedule", "drain", "node-a", "--cron", "0 2 * * 6", "--apply",
                    "--kubeconfig", cluster.kubeconfig, "-o", "json"))
    assert r[-1] == ("CronJob/migrate-drain-node-a", "unchanged")


def fire(cluster: Cluster, api: client.ApiClient, namespace: str, name: str,
         kubectl: Kubectl) -> Any:
    """Run the CronJob now, as an operator would (its schedule is the real clock's);
    its Job once it has finished."""
    batch = client.BatchV1Api(api)
    job = f"{name}-now"
    kubectl(cluster.kubeconfig, "create", "job", "-n", namespace, job,
            f"--from=cronjob/{name}")

    def finished() -> Any:
        # Complete or Failed, not just any condition: a v1.37 Job controller sets
        # SuccessCriteriaMet first, and counts the pod in status.succeeded only after.
        j = batch.read_namespaced_job(job, namespace)
        return j if any(c.type in ("Complete", "Failed") and c.status == "True"
                        for c in j.status.conditions or []) else None

    return wait_for(finished, timeout=90, what=f"Job {job} to finish")


def pod_log(cluster: Cluster, namespace: str, job: str) -> str:
    logs = [p for node in cluster.node_names for p in (cluster.node_dir(node) / "var/log/pods").glob(
        f"{namespace}_{job}-*/*/0.log")]
    assert len(logs) == 1, logs
    return logs[0].read_text()


def test_a_scheduled_job_runs_the_tool_in_cluster(cli: Cli, cluster: Cluster,
                                                  api: client.ApiClient,
                                                  cp_kubectl: Kubectl) -> None:
    # The scheduled drain's CronJob with `migrate doctor` for arguments: as the
    # `migrate` ServiceAccount, every permission the tool checks is granted.
    rendered = documents(cli("schedule", "drain", "node-a", "--cron", "*/5 * * * *",
                             "--image", TOOL, "--name", "doctor"))
    cronjob = rendered[-1]
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    pod["containers"][0]["args"] = ["doctor", "-o", "json"]
    cli("deploy", "--apply", "--kubeconfig", cluster.kubeconfig)
    client.BatchV1Api(api).create_namespaced_cron_job("migrate-system", cronjob)
    job = fire(cluster, api, "migrate-system", "doctor", cp_kubectl)
    assert job.status.succeeded == 1, pod_log(cluster, "migrate-system", job.metadata.name)
    report = json.loads(pod_log(cluster, "migrate-system", job.metadata.name))
    rbac = [c for c in report["checks"] if c["check"].startswith("rbac")]
    assert rbac and all(c["status"] == "PASS" for c in rbac), rbac
    pods = client.CoreV1Api(api).list_namespaced_pod(
        "migrate-system", label_selector=f"job-name={job.metadata.name}").items
    assert [p.spec.node_name for p in pods] == ["node-b"]  # kept off the drained node
    assert pods[0].spec.service_account_name == "migrate"


def test_a_service_account_without_the_role_is_denied(cli: Cli, cluster: Cluster,
                                                      api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": "elsewhere"}})
    core.create_namespaced_service_account("elsewhere", {"metadata": {"name": "nobody"}})
    core.create_namespaced_pod("elsewhere", {"metadata": {"name": "denied"}, "spec": {
        "serviceAccountName": "nobody", "restartPolicy": "Never", "containers": [{
            "name": "tool", "image": TOOL, "terminationMessagePolicy": "FallbackToLogsOnError",
            "args": ["pod", "web", "-n", "default", "--to", "node-b", "--image",
                     "127.0.0.1:5000/x:1"]}]}})
    pod = wait_for(lambda: (p := core.read_namespaced_pod("denied", "elsewhere")).status
                   .phase == "Failed" and p, timeout=60, what="the denied pod to fail")
    done = pod.status.container_statuses[0].state.terminated
    assert done.exit_code == 8  # AuthError
    assert done.message.splitlines()[-2:] == [
        'error: read pod default/web: pods "web" is forbidden: User "system:serviceaccount:'
        'elsewhere:nobody" cannot get resource "pods" in API group "" in the namespace '
        '"default"',
        "hint: ask for the RBAC this needs; `migrate doctor` lists what is missing"]


def test_the_containerfile_and_the_node_agents_agree_on_the_entrypoint() -> None:
    # The CronJob sets args only: the image's entrypoint must be the tool itself.
    assert '"migrate"' in (Path(REPO) / "Containerfile").read_text()


def _schedule_drain_of_node_a(cli: Cli, cluster: Cluster,
                              registry: RegistryUnderTest) -> None:
    """`deploy --apply`, then the CronJob draining node-a (`migrate-drain-node-a`)."""
    cli("deploy", "--apply", "--kubeconfig", cluster.kubeconfig, "--image", TOOL)
    r = cli("schedule", "drain", "node-a", "--cron", "0 2 * * 6", "--registry",
            f"{registry.host}/drains", "--apply", "--kubeconfig", cluster.kubeconfig,
            "--", "--no-tls-verify", "--timeout", "60", "--delete-emptydir-data")
    assert r.code == 0, r.err


def test_a_scheduled_drain_moves_the_pods_in_cluster(
        cli: Cli, cluster: Cluster, api: client.ApiClient,
        pod_plain_registry: RegistryUnderTest, cp_kubectl: Kubectl,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The tool that moves the pods runs in the Job, in-cluster: never where this test runs.
    monkeypatch.delenv("MIGRATE_NODE_ROOT", raising=False)
    admin = api
    try:
        core = client.CoreV1Api(admin)
        source = make_pod(core, "counters")
        _schedule_drain_of_node_a(cli, cluster, pod_plain_registry)
        job = fire(cluster, admin, "migrate-system", "migrate-drain-node-a", cp_kubectl)
        log = pod_log(cluster, "migrate-system", job.metadata.name)
        assert job.status.succeeded == 1, log
        moved = [p for p in core.list_namespaced_pod("default").items
                 if p.metadata.name != "counters" and p.metadata.name.startswith("counters")]
        assert [(p.spec.node_name, p.status.phase) for p in moved] == [("node-b", "Running")]
        assert moved[0].metadata.annotations["migrate.dev/source-uid"] == source.metadata.uid
        assert core.read_node("node-a").spec.unschedulable  # cordoned, by the drain
        assert "counters" in log and "migrate" in log
    finally:
        client.CoreV1Api(admin).patch_node("node-a", {"spec": {"unschedulable": None}})


def test_a_scheduled_drain_stopped_by_its_deadline_rolls_back(
        cli: Cli, cluster: Cluster, api: client.ApiClient,
        pod_plain_registry: RegistryUnderTest, cp_kubectl: Kubectl,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The Job's deadline: the real Job controller deletes the drain's pod, its node sends
    SIGTERM and waits the pod's grace period, as a kubelet does. The drain, whose journal
    goes with the pod, undoes the migration it had in flight and uncordons the node."""
    monkeypatch.delenv("MIGRATE_NODE_ROOT", raising=False)
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    try:
        source = make_pod(core, "held")
        _schedule_drain_of_node_a(cli, cluster, pod_plain_registry)
        job = "migrate-drain-node-a-deadline"
        with cluster.holding_checkpoints("node-a") as waiting:
            cp_kubectl(cluster.kubeconfig, "create", "job", "-n", "migrate-system", job,
                       "--from=cronjob/migrate-drain-node-a")
            wait_for(lambda: waiting() == 1, timeout=60, what="the drain's checkpoint")
            # The maintenance window is over while the checkpoint runs.
            batch.patch_namespaced_job(job, "migrate-system",
                                       {"spec": {"activeDeadlineSeconds": 1}})
            wait_for(lambda: "interrupted: waiting for the pods in flight" in pod_log(
                cluster, "migrate-system", job), timeout=30, what="SIGTERM to the drain")
            # The checkpoint takes a while yet (a real one of a big pod: many seconds),
            # within the pod's grace period: the drain must not be killed meanwhile.
            time.sleep(5)
        # released: the checkpoint ends, the stage boundary comes, the rollback runs
        wait_for(lambda: "error: interrupted" in pod_log(cluster, "migrate-system", job),
                 timeout=90, what="the drain to end")
        log = pod_log(cluster, "migrate-system", job)
        assert "interrupted and rolled back: default/held: " in log, log
        assert "uncordoned node-a" in log, log
        held = core.read_namespaced_pod("held", "default")
        assert (held.metadata.uid, held.spec.node_name, held.status.phase) == (
            source.metadata.uid, "node-a", "Running")
        assert "migrate.dev/claimed-by" not in (held.metadata.labels or {})
        assert not [p for p in core.list_namespaced_pod("default").items
                    if p.metadata.name.startswith("held-")]
        assert not core.read_node("node-a").spec.unschedulable
    finally:
        core.patch_node("node-a", {"spec": {"unschedulable": None}})
