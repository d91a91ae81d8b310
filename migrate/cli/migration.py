"""`migrate pod`, and the journal commands: resume, rollback, history."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from migrate.cli.completion import (
    complete_migrations,
    complete_namespaces,
    complete_nodes,
    complete_pods,
    complete_runs,
)
from migrate.cli.options import (
    AUTHFILE,
    CERT_DIR,
    CONTEXT,
    CREDS,
    ENCRYPT_FOR,
    KUBECONFIG,
    NAMESPACE,
    TLS_VERIFY,
    TLS_VERIFY_AGAIN,
    with_kube,
    with_recorded_registry,
    with_registry,
)
from migrate.cli.output import Format, ListFormat, emit, say, table
from migrate.pipeline.choices import Builder, BuildOn, Compression, default_compression
from migrate.settings import Settings

if TYPE_CHECKING:
    from migrate.adapters.kube import Cluster
    from migrate.pipeline.journal import Journal
    from migrate.pipeline.migration import Migration, Progress

log = logging.getLogger(__name__)


def _progress(stage: str, message: str) -> None:
    say(f"migrate: {stage}: {message}")


def _quiet(stage: str, message: str) -> None:
    log.info("%s: %s", stage, message)  # -o json|yaml: stderr stays quiet unless -v


def progress_for(output: Format) -> Callable[[str, str], None]:
    """Where progress goes: stderr for a human (table), the log (-v) with -o json|yaml."""
    return _progress if output is Format.table else _quiet


def follows_kubelet(output: Format, settings: Settings) -> bool:
    """Whether verify follows the restored pod's Events: only when its progress reaches
    anyone (a list and a watch of Events each run, for a script reading -o json, would
    be read by nobody)."""
    return output is Format.table or settings.output.verbose > 0


def _seconds(value: Any) -> str:
    return "-" if value is None else f"{value:.3f} s"


def _build_cell(plan: dict[str, Any]) -> str:
    if plan.get("build_on") == "node":
        return f"job on {plan['source']} ({plan['build_from']})"
    return f"here ({plan.get('build_from')})" if plan.get("build_on") else "-"


def _human(rep: dict[str, Any]) -> str:
    if rep.get("dry_run"):
        plan = rep["plan"]
        return table(("pod", "from", "to", "containers", "switch-over", "build", "images"),
                     [(f"{plan['namespace']}/{plan['pod']}", plan["source"],
                       plan["destination"], ",".join(plan["containers"]), plan["switch"],
                       _build_cell(plan), " ".join(plan["images"].values()))]) + \
            _emptied(plan) + "dry run: preflight passed, nothing changed\n"
    text = table(("stage", "status", "time"),
                 [(s["name"], s["status"], _seconds(s["seconds"])) for s in rep["stages"]])
    plan = rep.get("plan") or {}
    lines = [f"migration:        {rep['id']} ({rep['outcome']})"]
    if plan:
        lines.append(f"pod:              {plan['namespace']}/{plan['pod']} "
                     f"{plan['source']} -> {plan['destination']}")
    if rep.get("destination_pod"):
        lines.append(f"restored pod:     {rep['destination_pod']}")
    for container, image in rep["images"].items():
        lines.append(f"image ({container}): {image['reference']}")
    lines.append(f"state window:     {_seconds(rep['state_window_seconds'])} "
                 "(checkpoint -> source stopped: changes in it are lost)")
    lines.append(f"unavailability:   {_seconds(rep['unavailability_seconds'])} "
                 "(source stopped -> destination ready)")
    if "api_requests" in rep:
        lines.append(f"API requests:     {rep['api_requests']}")
    return text + "\n" + "\n".join(lines) + "\n" + _emptied(plan)


def _emptied(plan: dict[str, Any]) -> str:
    volumes = plan.get("emptied_volumes") or []
    return (f"note: emptyDir volume(s) {', '.join(volumes)} start empty on "
            f"{plan['destination']}: a checkpoint holds no volume's files\n" if volumes else "")


def _render(rep: dict[str, Any], output: Format) -> None:
    emit(rep, output.value, lambda: _human(rep))


def _finish(cluster: Cluster, output: Format, go: Callable[[Progress], Migration]) -> None:
    """Run a migration (``go``: start or resume it) to its end and report, also when it
    failed or was interrupted (a script reading -o json learns the id and where it
    stopped)."""
    from migrate.adapters import kube
    from migrate.pipeline import migration

    try:
        done = go(progress_for(output))
    except migration.StageFailed as e:
        _render(migration.Migration(e.journal).report(cluster.requests), output)
        raise
    except migration.Interrupted as e:
        _render(e.migration.report(cluster.requests), output)
        say(f"migrate: migration {e.migration.id} interrupted: `migrate resume "
            f"{e.migration.id}` continues it, `migrate rollback {e.migration.id}` undoes it")
        raise
    finally:
        kube.close(cluster)  # its queued Events: they exist once the command ends
    _render(done.report(cluster.requests), output)


def pod(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Pod to migrate.", metavar="POD", show_default=False,
                               autocompletion=complete_pods),
    to: str = typer.Option(..., "--to", help="Destination node.", show_default=False,
                           autocompletion=complete_nodes),
    container: list[str] = typer.Option([], "-c", "--container", help="Container(s) to "
                                        "checkpoint (default: the pod's default).",
                                        show_default=False),
    all_containers: bool = typer.Option(False, "--all-containers", help="Every container."),
    registry: str | None = typer.Option(None, "--registry", help="Push checkpoint images "
                                        "under HOST[:PORT]/REPO (no http://). This or "
                                        "--image is required.", show_default=False),
    image: str | None = typer.Option(None, "--image", help="The checkpoint image reference "
                                     "(one container). This or --registry is required.",
                                     show_default=False),
    builder: Builder = typer.Option(Builder.native, "--builder", help="How to build."),
    build_on: BuildOn = typer.Option(BuildOn.auto, "--build-on", help="local: read the "
                                     "archive here (MIGRATE_NODE_ROOT, or on the source "
                                     "node); node: a Job on the source node (--tool-image); "
                                     "auto: local when readable, else node. Checked before "
                                     "the checkpoint."),
    compression: Compression | None = typer.Option(
        None, "--compression", help="Layer compression (default: none; gzip with --builder "
        "buildah).", show_default=False),
    keep_source: bool = typer.Option(False, "--keep-source", help="Leave the source "
                                     "running."),
    delete_emptydir_data: bool = typer.Option(False, "--delete-emptydir-data", help="Move a "
                                              "pod with emptyDir volumes: their data is "
                                              "deleted with the source, and the restored "
                                              "pod gets them empty (as kubectl drain's "
                                              "flag)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check and print the plan only."),
    timeout: float = typer.Option(300.0, "--timeout", min=1, help="Seconds to wait for the "
                                  "restored pod (and for the source to go)."),
    cleanup_archive: bool = typer.Option(False, "--cleanup-archive", help="Remove the "
                                         "checkpoint archive from the node afterwards."),
    cleanup_image: bool = typer.Option(False, "--cleanup-image", help="After the switch-over, "
                                       "delete the checkpoint images from the registry when "
                                       "no pod but the restored one names them (its restarts "
                                       "restore from its node's copy: docs/retention.md); "
                                       "else they are kept and the report says why."),
    keep_archive: bool = typer.Option(False, "--keep-archive", help="Keep the archives of a "
                                      "run that fails (default: removed with the rest)."),
    tool_image: str | None = typer.Option(None, "--tool-image", envvar="MIGRATE_TOOL_IMAGE",
                                          help="The migrate container image, for --build-on "
                                          "node Jobs.", show_default=False),
    registry_secret: str | None = typer.Option(None, "--registry-secret", help="A "
                                               "dockerconfigjson Secret for node builds and "
                                               "the restored pod's pulls (default: a "
                                               "temporary one from your credentials).",
                                               show_default=False),
    encrypt_for: list[str] = ENCRYPT_FOR,
    authfile: Path | None = AUTHFILE,
    creds: str | None = CREDS,
    tls_verify: bool = TLS_VERIFY,
    cert_dir: Path | None = CERT_DIR,
    kubeconfig: Path | None = KUBECONFIG,
    context: str | None = CONTEXT,
    namespace: str | None = NAMESPACE,
    output: Format = typer.Option(Format.table, "-o", "--output", help="Output format."),
) -> None:
    """Move a running pod to another node with its memory and files."""
    from migrate.adapters import kube
    from migrate.adapters.registry.reference import check_prefix
    from migrate.errors import UsageError
    from migrate.pipeline import migration
    from migrate.pipeline.preflight import PodRequest

    if container and all_containers:
        raise UsageError("-c and --all-containers exclude each other")
    if (registry is None) == (image is None):
        raise UsageError("give exactly one of --registry REG and --image REF",
                         hint="--registry names an image per container")
    if registry is not None:
        registry = check_prefix(registry)
    settings = with_registry(with_kube(ctx, kubeconfig, context, namespace),
                             authfile=authfile, creds=creds, tls_verify=tls_verify,
                             cert_dir=cert_dir)
    req = PodRequest(pod=name, to=to, namespace=namespace, containers=tuple(container),
                     all_containers=all_containers, registry=registry, image=image,
                     builder=builder, build_on=build_on,
                     compression=compression or default_compression(builder),
                     keep_source=keep_source, dry_run=dry_run, timeout=timeout,
                     cleanup_archive=cleanup_archive, cleanup_image=cleanup_image,
                     tool_image=tool_image, registry_secret=registry_secret,
                     keep_archive=keep_archive, encrypt_for=tuple(encrypt_for),
                     delete_emptydir_data=delete_emptydir_data)
    cluster = kube.connect(settings.kube, background_events=True)
    planned = migration.plan(cluster, settings, req)
    if dry_run:
        _render(planned.report(), output)
        return
    _finish(cluster, output, lambda progress: migration.start(planned, progress).run(
        cluster, settings, progress, follow_kubelet=follows_kubelet(output, settings)))


def resume(
    ctx: typer.Context,
    journal_id: str = typer.Argument(..., metavar="ID", help="Migration id (migrate history).",
                                     show_default=False, autocompletion=complete_migrations),
    authfile: Path | None = AUTHFILE,
    creds: str | None = CREDS,
    tls_verify: bool | None = TLS_VERIFY_AGAIN,
    cert_dir: Path | None = CERT_DIR,
    kubeconfig: Path | None = KUBECONFIG,
    context: str | None = CONTEXT,
    output: Format = typer.Option(Format.table, "-o", "--output", help="Output format."),
) -> None:
    """Continue an interrupted migration from where it stopped.

    The registry is reached as the run reached it (the journal keeps the
    trust settings, never credentials); options given here win.
    """
    from migrate.adapters import kube
    from migrate.pipeline import migration

    settings = with_kube(ctx, kubeconfig, context, None)
    resumed = migration.load(settings, journal_id, resume=True)
    settings = with_recorded_registry(
        settings, resumed.journal.registry, run=f"migration {journal_id}",
        command=f"migrate resume {journal_id}", needs_registry=resumed.needs_registry,
        authfile=authfile, creds=creds, tls_verify=tls_verify, cert_dir=cert_dir)
    cluster = kube.connect(settings.kube, background_events=True)
    _finish(cluster, output, lambda progress: resumed.run(
        cluster, settings, progress, follow_kubelet=follows_kubelet(output, settings)))


def rollback(
    ctx: typer.Context,
    journal_id: str = typer.Argument(..., metavar="ID", help="Migration or drain id "
                                     "(migrate history, migrate history --drains).",
                                     show_default=False, autocompletion=complete_runs),
    kubeconfig: Path | None = KUBECONFIG,
    context: str | None = CONTEXT,
    output: Format = typer.Option(Format.table, "-o", "--output", help="Output format."),
) -> None:
    """Undo a migration that did not switch over: remove what it created (and release
    its pod). Given a drain's id: undo the drain's migrations in flight and uncordon its
    node (pods already moved or evicted stay where they are)."""
    from migrate.adapters import kube
    from migrate.pipeline import migration
    from migrate.pipeline.drain import run

    settings = with_kube(ctx, kubeconfig, context, None)
    if journal_id.startswith("drain-"):
        kind, drain = "drain", run.load(settings, journal_id)
        drain.lock()
        try:
            undone = run.rollback(kube.connect(settings.kube), settings, drain)
        finally:
            drain.unlock()
        outcome = drain.outcome
    else:
        kind, undoing = "migration", migration.load(settings, journal_id)
        undone = undoing.rollback(kube.connect(settings.kube), settings)
        outcome = undoing.journal.outcome
    emit({"id": journal_id, "kind": kind, "outcome": outcome, "undone": undone},
         output.value, lambda: "".join(f"{line}\n" for line in undone) or "nothing to undo\n")


def _stopped_at(j: Journal) -> tuple[str | None, str | None]:
    """(the stage that failed, the stage it was interrupted in): at most one is set."""
    outcome = j.current_outcome()
    if outcome == "interrupted":
        stage = next((s.name for s in j.stages if s.status in ("running", "failed")), None)
        return None, stage
    if outcome in ("failed", "rolled-back"):
        return next((s.name for s in j.stages if s.status == "failed"), None), None
    return None, None


def history(
    ctx: typer.Context,
    drains: bool = typer.Option(False, "--drains",
                                help="List drains (their ids are what --resume takes) instead "
                                     "of migrations."),
    namespace: str | None = typer.Option(None, "-n", "--namespace", show_default=False,
                                         help="Only the migrations of pods in this namespace.",
                                         autocompletion=complete_namespaces),
    all_namespaces: bool = typer.Option(False, "-A", "--all-namespaces", help="Every "
                                        "namespace (the default; as kubectl takes it)."),
    output: ListFormat = typer.Option(ListFormat.table, "-o", "--output", help="Output "
                                      "format; name: the ids alone, one a line."),
) -> None:
    """List migrations (or drains) from the journal directory, oldest first."""
    from migrate.errors import UsageError

    settings: Settings = ctx.obj
    namespace = namespace or settings.kube.namespace  # -n before the command, too
    if namespace and all_namespaces:
        raise UsageError("-n and -A exclude each other")
    if drains:
        _drain_history(settings, output)
        return
    from migrate.pipeline.journal import Journal

    rows = []
    for j in Journal.history(settings.state_dir):
        req = j.request
        plan = j.stage("preflight").data.get("plan") or {}
        ns = plan.get("namespace") or req.get("namespace") or None
        if namespace and ns != namespace:
            continue
        failed, interrupted = _stopped_at(j)
        rows.append({"id": j.id, "created": j.created, "outcome": j.current_outcome(),
                     "pod": f"{ns or '-'}/{req.get('pod')}", "namespace": ns,
                     "to": req.get("to"), "failed_stage": failed,
                     "interrupted_stage": interrupted})
    _rows(rows, output, "no migrations recorded", lambda: table(
        ("id", "created", "outcome", "pod", "to", "stopped at"),
        [(r["id"], r["created"], r["outcome"], r["pod"], r["to"],
          f"{r['failed_stage']} (failed)" if r["failed_stage"] else
          f"{r['interrupted_stage']} (interrupted)" if r["interrupted_stage"] else "-")
         for r in rows]))


def _rows(rows: list[dict[str, Any]], output: ListFormat, none: str,
          human: Callable[[], str]) -> None:
    """Print a listing: table, JSON, YAML, or (-o name) the ids alone."""
    if not rows and output is ListFormat.table:
        say(none)
    if output is ListFormat.name:
        typer.echo("".join(f"{r['id']}\n" for r in rows), nl=False)
        return
    emit(rows, output.value, human)


def _drain_history(settings: Settings, output: ListFormat) -> None:
    from migrate.pipeline.drain.report import counts
    from migrate.pipeline.drain.state import journal_dir
    from migrate.pipeline.journal import Journal

    rows: list[dict[str, Any]] = []
    for j in Journal.history(journal_dir(settings)):
        # The outcomes recorded so far: pods not reached yet have none.
        results = list((j.stage("drain").data.get("pods") or {}).values())
        rows.append({"id": j.id, "created": j.created, "outcome": j.current_outcome(),
                     "node": j.request.get("node"),
                     "pods": len(j.stage("plan").data.get("pods") or []),
                     "results": counts(results, "outcome")})

    def summary(results: dict[str, int]) -> str:
        return ", ".join(f"{n} {outcome}" for outcome, n in sorted(results.items())) or "-"

    _rows(rows, output, "no drains recorded", lambda: table(
        ("id", "created", "outcome", "node", "pods", "results"),
        [(r["id"], r["created"], r["outcome"], r["node"], str(r["pods"]), summary(r["results"]))
         for r in rows]))


def register(app: typer.Typer) -> None:
    """Attach the migration commands to the root app."""
    app.command("pod")(pod)
    app.command("resume")(resume)
    app.command("rollback")(rollback)
    app.command("history")(history)
