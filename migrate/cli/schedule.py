"""`migrate deploy`, `migrate schedule drain` and `migrate schedule prune`: the tool's objects
for running in-cluster."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from migrate.cli.completion import complete_namespaces, complete_nodes
from migrate.cli.examples import Group
from migrate.cli.options import CONTEXT, KUBECONFIG, ManifestFormat, with_kube
from migrate.cli.output import emit
from migrate.errors import UsageError

if TYPE_CHECKING:
    from migrate.settings import Settings


NAMESPACE = typer.Option(None, "-n", "--namespace", help="Namespace the tool runs in "
                         "(created; default: migrate-system).", show_default=False,
                         autocompletion=complete_namespaces)
APPLY = typer.Option(False, "--apply", help="Create or update the objects in the cluster "
                     "instead of printing them (running it again is harmless).")
K8S_VERSION = typer.Option(None, "--k8s-version", metavar="X.Y", help="Validate against this "
                           "Kubernetes version (default: the cluster's with --apply, else "
                           "1.30).", show_default=False)
TOOL_IMAGE = typer.Option(None, "--image", envvar="MIGRATE_TOOL_IMAGE", help="The tool's image "
                         "(default with --apply: the one `migrate deploy --image` recorded).",
                         show_default=False)
TIME_ZONE = typer.Option(None, "--time-zone", metavar="ZONE", help="IANA time zone of the "
                         "schedule (default: the cluster's controller manager's).",
                         show_default=False)
OUTPUT = typer.Option(ManifestFormat.yaml, "-o", "--output", help="yaml: a multi-document "
                      "stream (kubectl apply -f -); json: a v1 List. With --apply: what "
                      "happened to each object.")


def _render(objects: list[dict[str, Any]], output: ManifestFormat) -> None:
    if output is ManifestFormat.json:
        emit({"apiVersion": "v1", "kind": "List", "items": objects}, "json", str)
        return
    import yaml

    typer.echo(yaml.safe_dump_all(objects, sort_keys=False, explicit_start=True), nl=False)


def _emit_or_apply(settings: Settings, objects: list[dict[str, Any]], apply: bool,
                   k8s_version: str | None, output: ManifestFormat) -> None:
    """Validate, then print the objects or apply them (kubectl-style lines, or JSON)."""
    from migrate.pipeline import incluster

    if not apply:
        incluster.check(objects, incluster.target_version(k8s_version))
        _render(objects, output)
        return
    from migrate.adapters import kube

    cluster = kube.connect(settings.kube)
    version = k8s_version or kube.server_minor_version(cluster)
    incluster.check(objects, incluster.target_version(version))
    results = incluster.apply(cluster, objects)
    emit(results, "json" if output is ManifestFormat.json else "table", lambda: "".join(
        f"{str(r['kind']).lower()}/{r['name']} {r['action']}\n" for r in results))


def _namespace(given: str | None, settings: Settings) -> str:
    """The tool's namespace: -n after the command, or before it, else migrate-system (never
    the kubeconfig context's: the tool's home is not wherever the operator happens to be)."""
    from migrate.pipeline.incluster import DEFAULT_NAMESPACE

    return given or settings.kube.namespace or DEFAULT_NAMESPACE


def deploy(
    ctx: typer.Context,
    namespace: str | None = NAMESPACE,
    image: str | None = typer.Option(None, "--image", envvar="MIGRATE_TOOL_IMAGE",
                                     help="The tool's image: recorded on the "
                                     "ServiceAccount, the default of `migrate schedule "
                                     "--apply`.", show_default=False),
    apply: bool = APPLY,
    k8s_version: str | None = K8S_VERSION,
    kubeconfig: Path | None = KUBECONFIG,
    context: str | None = CONTEXT,
    output: ManifestFormat = OUTPUT,
) -> None:
    """The namespace, ServiceAccount and RBAC the tool needs to run in-cluster."""
    from migrate.pipeline import incluster

    settings = with_kube(ctx, kubeconfig, context, None)
    objects = incluster.deploy_objects(incluster.Deployment(_namespace(namespace, settings),
                                                            image))
    _emit_or_apply(settings, objects, apply, k8s_version, output)


def _parse_as(ctx: typer.Context, command: str, args: list[str]) -> dict[str, Any]:
    """Parse passed-through ``args`` with `migrate COMMAND`'s own parser, when it exists:
    a mistake is refused now, not in the CronJob's pod on the first night. The values
    it parsed, defaults included ({} with no parser)."""
    root = ctx.find_root()
    get_command = getattr(root.command, "get_command", None)  # typer's (vendored) click
    target = get_command(root, command) if get_command is not None else None
    if target is None:
        return {}  # nothing to check against: they go through as they are
    try:
        parsed = target.make_context(command, list(args), parent=root)  # consumes its list
    except typer.TyperException as e:
        raise UsageError(f"{command} option: {e.format_message()}",
                         hint=f"see 'migrate {command} --help'") from e
    return dict(parsed.params)


# Options the CronJob's pod cannot use: it has none of this machine's files, and what its
# arguments say is stored in the CronJob for anyone who may read it.
_NOT_ON_A_SCHEDULE = {
    "--creds": ("credentials on its command line would be stored in the CronJob, readable "
                "by anyone who may read it",
                "put them in a dockerconfigjson Secret and give --registry-secret NAME"),
    "--authfile": ("a scheduled run cannot read credential files on this machine",
                   "put them in a dockerconfigjson Secret and give --registry-secret NAME"),
    "--cert-dir": ("a scheduled run cannot read certificate directories on this machine",
                   "the tool's image must trust the registry (a CA in its system store)"),
    "--kubeconfig": ("a scheduled run talks to its own cluster with its ServiceAccount",
                     "leave it out: `schedule --apply` sets up the RBAC it needs"),
    "--context": ("a scheduled run talks to its own cluster with its ServiceAccount",
                  "leave it out: `schedule --apply` sets up the RBAC it needs"),
}


def _refuse_machine_options(command: str, options: list[str]) -> None:
    """Refuse what only works from this machine, naming the option, never its value."""
    for opt, (why, hint) in _NOT_ON_A_SCHEDULE.items():
        if any(o == opt or o.startswith(opt + "=") for o in options):
            raise UsageError(f"{command} option {opt}: {why}", hint=hint)


def _check_drain_options(ctx: typer.Context, node: str, options: list[str]) -> dict[str, Any]:
    """Parse the passed-through options with `migrate drain`'s own parser, when it exists;
    the values it parsed."""
    _refuse_machine_options("drain", options)
    if any(o == "--encrypt-for" or o.startswith("--encrypt-for=") for o in options):
        # The drain runs in the CronJob's pod, which has none of this machine's files.
        raise UsageError("drain option --encrypt-for: a scheduled drain runs in a pod that "
                         "cannot read key files on this machine",
                         hint="encrypt in a drain run from here (`migrate drain NODE "
                         "--encrypt-for jwe:KEY`); scheduled drains push unencrypted images")
    return _parse_as(ctx, "drain", [node, *options])


def schedule_drain(
    ctx: typer.Context,
    node: str = typer.Argument(..., metavar="NODE", help="The node to drain (with --apply: "
                               "checked to exist).", show_default=False,
                               autocompletion=complete_nodes),
    cron: str = typer.Option(..., "--cron", help='When, as five cron fields: "0 2 * * 6" '
                             "is Saturdays at 02:00.", show_default=False),
    namespace: str | None = NAMESPACE,
    image: str | None = TOOL_IMAGE,
    registry: str | None = typer.Option(None, "--registry", help="Push checkpoint images "
                                        "under HOST[:PORT]/REPO (passed to the drain).",
                                        show_default=False),
    registry_secret: str | None = typer.Option(None, "--registry-secret", metavar="NAME",
                                               help="A dockerconfigjson Secret in the "
                                               "namespace: the registry credentials.",
                                               show_default=False),
    time_zone: str | None = TIME_ZONE,
    name: str | None = typer.Option(None, "--name", help="CronJob name (default: "
                                    "migrate-drain-NODE).", show_default=False),
    deadline: int = typer.Option(6 * 3600, "--deadline", min=60, help="Seconds a drain may "
                                 "run before its Job is stopped."),
    apply: bool = APPLY,
    k8s_version: str | None = K8S_VERSION,
    kubeconfig: Path | None = KUBECONFIG,
    context: str | None = CONTEXT,
    output: ManifestFormat = OUTPUT,
) -> None:
    """A CronJob that runs `migrate drain NODE` in-cluster, with the RBAC it needs.

    Options this command does not know are drain options, passed through to the
    scheduled `migrate drain` (put them after `--` to be explicit), e.g.
    `-- --concurrency 8 --to-selector pool=b`.
    """
    from migrate.pipeline import incluster, schedule

    options = list(ctx.args)
    parsed = _check_drain_options(ctx, node, options)
    settings = with_kube(ctx, kubeconfig, context, None)
    namespace = _namespace(namespace, settings)
    if registry is not None:
        from migrate.adapters.registry.reference import check_prefix

        registry = check_prefix(registry)
    if apply:
        from migrate.adapters import kube
        from migrate.pipeline.names import check_node

        cluster = kube.connect(settings.kube)
        check_node(cluster, node)  # nothing is applied for a node that does not exist
        if image is None:
            image = incluster.service_account_image(cluster, namespace)
    if image is None:
        raise UsageError("say which image runs the drain: --image REF",
                         hint="build it from the Containerfile and push it; or record it "
                         "once with `migrate deploy --image REF --apply`")
    deployment = incluster.Deployment(namespace, image)
    job = schedule.cronjob(schedule.ScheduledDrain(
        node=node, cron=cron, image=image, deployment=deployment, registry=registry,
        registry_secret=registry_secret, time_zone=time_zone, name=name,
        drain_options=tuple(options), deadline=deadline,
        drain_timeout=float(parsed.get("timeout", schedule.DRAIN_TIMEOUT))))
    _emit_or_apply(settings, [*incluster.deploy_objects(deployment), job], apply,
                   k8s_version, output)


def _check_prune_options(ctx: typer.Context, options: list[str]) -> None:
    """Parse the passed-through options with `migrate prune`'s own parser."""
    _refuse_machine_options("prune", options)
    for own in ("--dir", "--termination-message-path", "--dry-run"):
        if any(o == own or o.startswith(own + "=") for o in options):
            raise UsageError(f"prune option {own} makes no sense on a schedule",
                             hint="run `migrate prune --dry-run` by hand to see what would go")
    _parse_as(ctx, "prune", options)
    if not any(o.split("=")[0] in ("--older-than", "--keep", "--max-size") for o in options):
        raise UsageError("say what the scheduled prune removes: --older-than, --keep or "
                         "--max-size (after --)", hint='e.g. `migrate schedule prune --cron '
                         '"30 3 * * *" -- --older-than 7d --keep 2`')


def schedule_prune(
    ctx: typer.Context,
    cron: str = typer.Option(..., "--cron", help='When, as five cron fields: "30 3 * * *" '
                             "is every day at 03:30.", show_default=False),
    namespace: str | None = NAMESPACE,
    image: str | None = TOOL_IMAGE,
    registry_secret: str | None = typer.Option(None, "--registry-secret", metavar="NAME",
                                               help="A dockerconfigjson Secret in the "
                                               "namespace: credentials for prune --registry.",
                                               show_default=False),
    time_zone: str | None = TIME_ZONE,
    name: str | None = typer.Option(None, "--name", help="CronJob name (default: "
                                    "migrate-prune).", show_default=False),
    deadline: int = typer.Option(3600, "--deadline", min=60, help="Seconds a prune may "
                                 "run before its Job is stopped."),
    apply: bool = APPLY,
    k8s_version: str | None = K8S_VERSION,
    kubeconfig: Path | None = KUBECONFIG,
    context: str | None = CONTEXT,
    output: ManifestFormat = OUTPUT,
) -> None:
    """A CronJob that runs `migrate prune` in-cluster, with its own ServiceAccount and
    only the RBAC a prune needs.

    Options this command does not know are prune options, passed through to the
    scheduled `migrate prune` (after `--`), e.g. `-- --older-than 7d --keep 2`. Node
    archives are pruned by a Job on each node (--where node, this image); in-cluster
    the journals of migrations run elsewhere are not seen, so their archives are kept
    by their claims on the pods.
    """
    from migrate.pipeline import incluster, schedule

    options = list(ctx.args)
    _check_prune_options(ctx, options)
    settings = with_kube(ctx, kubeconfig, context, None)
    namespace = _namespace(namespace, settings)
    if apply and image is None:
        from migrate.adapters import kube

        image = incluster.service_account_image(kube.connect(settings.kube), namespace)
    if image is None:
        raise UsageError("say which image runs the prune: --image REF",
                         hint="build it from the Containerfile and push it; or record it "
                         "once with `migrate deploy --image REF --apply`")
    deployment = incluster.Deployment(namespace, image)
    job = schedule.prune_cronjob(schedule.ScheduledPrune(
        cron=cron, image=image, prune_options=tuple(options), deployment=deployment,
        registry_secret=registry_secret, time_zone=time_zone, name=name, deadline=deadline))
    _emit_or_apply(settings, [*incluster.prune_objects(deployment), job], apply,
                   k8s_version, output)


schedule_app = typer.Typer(name="schedule", cls=Group, no_args_is_help=True,
                           help="Run the tool in-cluster on a schedule (CronJobs).")


def register(app: typer.Typer) -> None:
    """Attach `deploy`, `schedule drain` and `schedule prune` to the root app."""
    app.command("deploy")(deploy)
    schedule_app.command("drain", context_settings={
        "allow_extra_args": True, "ignore_unknown_options": True})(schedule_drain)
    schedule_app.command("prune", context_settings={
        "allow_extra_args": True, "ignore_unknown_options": True})(schedule_prune)
    app.add_typer(schedule_app)

