"""`migrate schedule drain` and `migrate schedule prune`: CronJobs that drain a node at a
maintenance window, and prune checkpoint archives or images, in-cluster.

The CronJob (templates/drain-cronjob.yaml) runs the tool's own image as the
`migrate` ServiceAccount of `migrate deploy` (whose objects come first in
the output) with `migrate drain NODE`, plus:

- `--build-on node --tool-image IMAGE`: in-cluster the archives are on the
  drained node, not where the drain runs, so each image is built by a Job on
  that node from the same image (unless the drain options say otherwise);
- `--registry REG` when given;
- the drain options given after the command's own, passed through as they
  are (checked against `migrate drain`'s own options when it is installed);
- registry credentials: `--registry-secret NAME` (a dockerconfigjson Secret in
  the CronJob's namespace) is mounted read-only and REGISTRY_AUTH_FILE
  points at it; the drain then hands each build Job a temporary Secret made
  from those credentials in the migrated pod's namespace (nodebuild.py).

The pod keeps off the drained node (node affinity): there the drain would
evict itself. Its journal lives in an emptyDir (MIGRATE_STATE_DIR), so the
Job's log, not a later `migrate drain --resume`, is the record of a run, and
nothing could resume or roll back a drain the Job stopped half way (its
deadline, a deleted Job): the drain runs with `--on-interrupt rollback`, and
its pod gets the time to do that after SIGTERM (terminationGracePeriodSeconds:
the per-pod --timeout a migration in flight may still take to reach a stage
boundary, plus ROLLBACK_SECONDS to undo it).

The prune's CronJob (templates/prune-cronjob.yaml) runs `migrate prune` as
its own ServiceAccount (incluster.prune_objects: only the prune's rules),
adding `--where node --tool-image IMAGE --namespace NS` for node archives: a
Job on each node does the deleting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from migrate.adapters.registry.reference import (
    REACH_HINT,
    parse_reference,
    unreachable_from_pods,
)
from migrate.errors import UsageError
from migrate.pipeline.incluster import ACCOUNT, LABELS, PRUNE_ACCOUNT, Deployment
from migrate.pipeline.templating import fill

Obj = dict[str, Any]

AUTH_DIR = "/run/migrate/registry"
STATE_DIR = "/var/lib/migrate"
SCRATCH = "/tmp"
_MAX_NAME = 52  # the API server's limit for CronJob names
#: `migrate drain --timeout`'s default, for when its own parser is not there to say it
DRAIN_TIMEOUT = 300.0
ROLLBACK_SECONDS = 120  # after the migrations in flight stopped: undoing them
_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight",
                "@hourly")


@dataclass(frozen=True)
class ScheduledDrain:
    """A drain of ``node`` on the ``cron`` schedule, from the tool image ``image``."""

    node: str
    cron: str
    image: str
    deployment: Deployment = field(default_factory=Deployment)
    registry: str | None = None
    registry_secret: str | None = None
    time_zone: str | None = None
    name: str | None = None
    drain_options: tuple[str, ...] = ()
    deadline: int = 6 * 3600
    drain_timeout: float = DRAIN_TIMEOUT  # the drain's --timeout, as its parser read it


def check_cron(text: str) -> str:
    """Refuse what is plainly not a five-field schedule (the API server checks the rest)."""
    fields = text.split()
    if text.strip() in _DESCRIPTORS or len(fields) == 5:
        return " ".join(fields)
    raise UsageError(f"--cron {text!r} is not a cron schedule",
                     hint='five fields, minute hour day-of-month month day-of-week: '
                          '"0 2 * * 6" is Saturdays at 02:00')


def cronjob_name(s: ScheduledDrain) -> str:
    """``--name``, else migrate-drain-<node> cut to the 52 characters a CronJob may have."""
    if s.name:
        if len(s.name) > _MAX_NAME:
            raise UsageError(f"--name {s.name!r} is longer than {_MAX_NAME} characters",
                             hint="the CronJob controller adds 11 characters for its Jobs")
        return s.name
    return f"migrate-drain-{s.node}"[:_MAX_NAME].rstrip("-.")


def _given(options: tuple[str, ...], name: str) -> bool:
    return any(o == name or o.startswith(f"{name}=") for o in options)


def grace_seconds(s: ScheduledDrain) -> int:
    """How long the drain's pod may take after SIGTERM (see the module's docstring)."""
    return int(s.drain_timeout) + ROLLBACK_SECONDS


def _option(options: tuple[str, ...], name: str) -> str | None:
    """The value of ``name`` among pass-through options (``NAME VALUE`` or ``NAME=VALUE``)."""
    for i, o in enumerate(options):
        if o.startswith(f"{name}="):
            return o.partition("=")[2]
        if o == name and i + 1 < len(options):
            return options[i + 1]
    return None


def check_registry_reach(s: ScheduledDrain) -> None:
    """The drain runs in a pod (and builds in Jobs' pods): a registry on a loopback address
    is the pod's own, which nothing pushed there, so refuse it when the CronJob is made."""
    given = s.registry or _option(s.drain_options, "--registry")
    ref = parse_reference(given) if given else None
    if ref is not None and ref.loopback:
        raise UsageError("a scheduled drain runs in a pod, which "
                         + unreachable_from_pods(ref.registry), hint=REACH_HINT)


def drain_args(s: ScheduledDrain) -> list[str]:
    """The drain command line the CronJob runs (the image's entrypoint is `migrate`)."""
    check_registry_reach(s)
    args = ["drain", s.node]
    if s.registry:
        args += ["--registry", s.registry]
    if not _given(s.drain_options, "--on-interrupt"):
        args += ["--on-interrupt", "rollback"]
    if not _given(s.drain_options, "--build-on"):
        args += ["--build-on", "node"]
    if not _given(s.drain_options, "--tool-image"):
        args += ["--tool-image", s.image]
    return args + list(s.drain_options)


def cronjob(s: ScheduledDrain) -> Obj:
    """The CronJob (templates/drain-cronjob.yaml)."""
    env = [{"name": "HOME", "value": SCRATCH},
           {"name": "MIGRATE_STATE_DIR", "value": STATE_DIR}]
    mounts: list[Obj] = [{"name": "scratch", "mountPath": SCRATCH},
                         {"name": "state", "mountPath": STATE_DIR}]
    volumes: list[Obj] = [{"name": "scratch", "emptyDir": {}},
                          {"name": "state", "emptyDir": {}}]
    if s.registry_secret:
        env.append({"name": "REGISTRY_AUTH_FILE", "value": f"{AUTH_DIR}/.dockerconfigjson"})
        mounts.append({"name": "registry-auth", "mountPath": AUTH_DIR, "readOnly": True})
        volumes.append({"name": "registry-auth", "secret": {"secretName": s.registry_secret}})
    labels = {**LABELS, "migrate.dev/drain-node": s.node}
    document: Obj = fill("drain-cronjob.yaml", {
        "name": cronjob_name(s), "namespace": s.deployment.namespace, "labels": labels,
        "schedule": check_cron(s.cron), "time_zone": s.time_zone, "deadline": s.deadline,
        "account": ACCOUNT, "avoid": [s.node], "image": s.image, "args": drain_args(s),
        "grace": grace_seconds(s),
        "env": env, "mounts": mounts, "volumes": volumes})
    return document


@dataclass(frozen=True)
class ScheduledPrune:
    """A `migrate prune` on the ``cron`` schedule, from the tool image ``image``."""

    cron: str
    image: str
    prune_options: tuple[str, ...]
    deployment: Deployment = field(default_factory=Deployment)
    registry_secret: str | None = None
    time_zone: str | None = None
    name: str | None = None
    deadline: int = 3600


def prune_args(s: ScheduledPrune) -> list[str]:
    """The prune command line the CronJob runs: node archives are pruned by a Job on each
    node (the CronJob's pod sees no node's files) in the CronJob's namespace."""
    args = ["prune"]
    if not _given(s.prune_options, "--registry"):
        if not _given(s.prune_options, "--where"):
            args += ["--where", "node"]
        if not _given(s.prune_options, "--tool-image"):
            args += ["--tool-image", s.image]
        if not _given(s.prune_options, "--namespace") and not _given(s.prune_options, "-n"):
            args += ["--namespace", s.deployment.namespace]
    return args + list(s.prune_options)


def prune_cronjob(s: ScheduledPrune) -> Obj:
    """The CronJob (templates/prune-cronjob.yaml)."""
    name = s.name or "migrate-prune"
    if len(name) > _MAX_NAME:
        raise UsageError(f"--name {name!r} is longer than {_MAX_NAME} characters",
                         hint="the CronJob controller adds 11 characters for its Jobs")
    env = [{"name": "HOME", "value": SCRATCH}]
    mounts: list[Obj] = [{"name": "scratch", "mountPath": SCRATCH}]
    volumes: list[Obj] = [{"name": "scratch", "emptyDir": {}}]
    if s.registry_secret:
        env.append({"name": "REGISTRY_AUTH_FILE", "value": f"{AUTH_DIR}/.dockerconfigjson"})
        mounts.append({"name": "registry-auth", "mountPath": AUTH_DIR, "readOnly": True})
        volumes.append({"name": "registry-auth", "secret": {"secretName": s.registry_secret}})
    document: Obj = fill("prune-cronjob.yaml", {
        "name": name, "namespace": s.deployment.namespace,
        "labels": {**LABELS, "app.kubernetes.io/component": "prune"},
        "schedule": check_cron(s.cron), "time_zone": s.time_zone, "deadline": s.deadline,
        "account": PRUNE_ACCOUNT, "image": s.image, "args": prune_args(s), "env": env,
        "mounts": mounts, "volumes": volumes})
    return document
