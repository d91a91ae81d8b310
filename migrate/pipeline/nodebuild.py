"""Build on the node: a Job on the source node builds and pushes the image.

For when the archive is not readable where the tool runs (the usual case
off-node): the archive never leaves the node except as the pushed image. The
Job runs the tool's own image (`--tool-image`, built from the Containerfile)
with the checkpoint directory mounted read-only, pushes with credentials from
a Secret (one the operator names, or a temporary one made from the local
credentials for that registry, deleted afterwards), and hands the digest back
as its container's termination message.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Protocol

from migrate.adapters import kube
from migrate.adapters.registry.auth import auth_token, lookup
from migrate.adapters.registry.reference import parse_reference
from migrate.errors import AlreadyExistsError, ClusterError, UsageError
from migrate.pipeline.choices import Builder, Compression
from migrate.pipeline.templating import fill
from migrate.settings import Settings

AUTH_DIR = "/run/migrate/registry"
SCRATCH = "/tmp"


@dataclass(frozen=True)
class NodeBuild:
    """One image to build on ``node`` from ``archive`` (a path on that node)."""

    namespace: str
    node: str
    pod: str
    archive: str
    image: str
    run_id: str
    tool_image: str
    builder: Builder = Builder.native
    compression: Compression = Compression.none
    tls_verify: bool = True
    secret: str | None = None  # dockerconfigjson Secret in ``namespace``
    deadline: int = 900


def run_name(prefix: str, run_id: str, part: str, most: int = 63) -> str:
    """The name of an object a run makes, its own and the same on every try: PREFIX-HASH,
    the hash of the run's id and ``part``. Known before the create, it is recorded
    first (`Journal.creating`), so that a create whose answer is lost, or a process
    stopped just after it, still leaves its name for cleanup and rollback; a
    generated name would be known only from the answer."""
    digest = hashlib.sha256(f"{run_id}\0{part}".encode()).hexdigest()[:10]
    return f"{prefix[:most - len(digest) - 1].rstrip('-.')}-{digest}"


def registry_secret(settings: Settings, namespace: str, image: str,
                    run_id: str) -> dict[str, Any] | None:
    """A dockerconfigjson Secret holding the local credentials for ``image``'s registry
    (one a run and registry: its build Jobs and its restored pod share it)."""
    ref = parse_reference(image)
    creds = lookup(ref.registry, ref.repository, settings.registry)
    if creds is None:
        return None
    config = json.dumps({"auths": {ref.registry: {"auth": auth_token(creds)}}})
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"name": run_name("migrate-registry", run_id, ref.registry),
                         "namespace": namespace,
                         "labels": {"migrate.dev/migration": run_id}},
            "data": {".dockerconfigjson": base64.b64encode(config.encode()).decode()}}


class Journal(Protocol):
    """Where a run records the objects it makes (pipeline.journal.Journal)."""

    def creating(self, kind: str, namespace: str, name: str) -> None: ...

    def created_object(self, kind: str, namespace: str, name: str, uid: str = "") -> None: ...


def create_named(cluster: kube.Cluster, journal: Journal, kind: str, namespace: str,
                 body: dict[str, Any]) -> str:
    """Create a run's Secret or Job under its own name (`run_name`), recorded before it
    is asked for; one already there is this run's, made by a try cut short, and is
    used as it is. Returns the name."""
    name = str(body["metadata"]["name"])
    journal.creating(kind, namespace, name)
    create = kube.create_secret if kind == "Secret" else kube.create_job
    try:
        made = create(cluster, namespace, body)
    except AlreadyExistsError:
        return name
    journal.created_object(kind, namespace, name, made["metadata"].get("uid", ""))
    return name


def start(cluster: kube.Cluster, settings: Settings, b: NodeBuild, journal: Journal) -> str:
    """Create the build's Job (and, when ``b`` names no Secret and the registry needs
    credentials, a temporary Secret made from the local ones); returns the Job's name.
    ``journal`` records each object before it is created."""
    if b.secret is None:
        body = registry_secret(settings, b.namespace, b.image, b.run_id)
        if body is not None:
            secret = create_named(cluster, journal, "Secret", b.namespace, body)
            b = dataclasses.replace(b, secret=secret)
    return create_named(cluster, journal, "Job", b.namespace, job_manifest(b))


def job_manifest(b: NodeBuild) -> dict[str, Any]:
    """The Job that builds ``b`` (templates/build-job.yaml)."""
    directory = str(PurePosixPath(b.archive).parent)
    args = ["build", b.archive, "--image", b.image, "--builder", b.builder.value,
            "--compression", b.compression.value, "--termination-message-path",
            "/dev/termination-log", "-o", "json"]
    if not b.tls_verify:
        args.append("--no-tls-verify")
    env = [{"name": "HOME", "value": SCRATCH}, {"name": "MIGRATE_CACHE_DIR",
                                                  "value": f"{SCRATCH}/cache"}]
    mounts = [{"name": "checkpoints", "mountPath": directory, "readOnly": True},
              {"name": "scratch", "mountPath": SCRATCH}]
    volumes: list[dict[str, Any]] = [
        {"name": "checkpoints", "hostPath": {"path": directory, "type": "Directory"}},
        {"name": "scratch", "emptyDir": {}}]
    if b.secret:
        env.append({"name": "REGISTRY_AUTH_FILE", "value": f"{AUTH_DIR}/.dockerconfigjson"})
        mounts.append({"name": "registry-auth", "mountPath": AUTH_DIR, "readOnly": True})
        volumes.append({"name": "registry-auth", "secret": {"secretName": b.secret}})
    labels = {"migrate.dev/migration": b.run_id}
    # At most 63 characters: the Job controller puts its name in a label of its pods.
    job: dict[str, Any] = fill("build-job.yaml", {
        "name": run_name(f"migrate-build-{b.pod}", b.run_id, b.archive), "namespace": b.namespace,
        "labels": labels, "deadline": b.deadline, "node": b.node, "image": b.tool_image,
        "args": args, "env": env, "mounts": mounts, "volumes": volumes})
    return job


def _finished(job: dict[str, Any] | None) -> str | None:
    if job is None:
        raise ClusterError("the build Job was deleted while it ran",
                           hint="something else removed it")
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return f"{cond['type']}: {cond.get('reason', '')} {cond.get('message', '')}".strip()
    return None


def _termination(cluster: kube.Cluster, namespace: str, job: str) -> tuple[int, str]:
    pods = kube.list_pods(cluster, namespace, label_selector=f"job-name={job}")
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            done = (status.get("state") or {}).get("terminated") or {}
            if done:
                return int(done.get("exitCode", -1)), str(done.get("message", ""))
    return -1, ""


def _failure(message: str, outcome: str) -> tuple[str, str | None]:
    """The build's own ``error:`` and ``hint:`` lines from the tail of its output
    (the termination message of a failed container), else the tail's last line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    hints = [line.removeprefix("hint: ") for line in lines if line.startswith("hint: ")]
    if errors:
        return errors[-1][:300], (hints[-1][:300] if hints else None)
    return (lines[-1][:300] if lines else outcome), None


def termination_message(cluster: kube.Cluster, namespace: str, job: str, timeout: float,
                        what: str = "build", reported: tuple[int, ...] = ()) -> str:
    """Wait for the Job (of the tool's image) and return its termination message; a
    failed one raises with the tool's own ``error:`` and ``hint:`` lines out of it.
    ``reported``: exit codes after which the tool has written its report all the same
    (a prune that removed some archives and not others: 10), returned as a success's."""
    outcome = kube.watch_job(cluster, namespace, job, _finished, timeout)
    code, message = _termination(cluster, namespace, job)
    if code in reported:
        return message
    if not outcome.startswith("Complete") or code != 0:
        cause, hint = _failure(message, outcome)
        logs = f"kubectl logs -n {namespace} job/{job}"
        raise ClusterError(f"the {what} Job {job} failed (exit {code}): {cause}",
                           hint=f"{hint}; {logs}" if hint else logs)
    return message


def collect(cluster: kube.Cluster, namespace: str, job: str, timeout: float) -> dict[str, Any]:
    """Wait for the Job and read the build's result from its termination message."""
    message = termination_message(cluster, namespace, job, timeout)
    try:
        result: dict[str, Any] = json.loads(message)
        ok = isinstance(result, dict) and str(result.get("digest", "")).startswith("sha256:")
    except ValueError:
        ok = False
    if not ok:
        raise ClusterError(f"the build Job {job} finished without a result",
                           hint="is --tool-image the migrate image?")
    return result


def check_tool_image(tool_image: str | None) -> str:
    """`--build-on node` needs the tool's image."""
    if not tool_image:
        raise UsageError("--build-on node needs the tool's container image",
                         hint="build it from the Containerfile, push it, and pass "
                         "--tool-image REF (or set MIGRATE_TOOL_IMAGE)")
    parse_reference(tool_image)
    return tool_image
