"""`migrate drain` and `migrate uncordon`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from migrate.cli.completion import complete_drains, complete_nodes
from migrate.cli.options import (
    AUTHFILE,
    CERT_DIR,
    CONTEXT,
    CREDS,
    ENCRYPT_FOR,
    KUBECONFIG,
    with_kube,
    with_recorded_registry,
    with_registry,
)
from migrate.cli.output import Format, emit, say, table
from migrate.errors import MigrateError, PartialFailure, UsageError
from migrate.pipeline.choices import BuildOn, OnInterrupt

if TYPE_CHECKING:
    from migrate.adapters.kube import Cluster
    from migrate.pipeline.journal import Journal
    from migrate.settings import Settings


def _progress(subject: str, message: str) -> None:
    say(f"migrate: {subject}: {message}")


def _quiet(subject: str, message: str) -> None:
    """-o json|yaml: progress is logged (-v), but what explains a wait after Ctrl-C is
    said: the user is waiting for the prompt."""
    if message.startswith("interrupted"):
        _progress(subject, message)
        return
    import logging

    logging.getLogger(__name__).info("%s: %s", subject, message)


def _detail(pod: dict[str, Any]) -> str:
    if pod.get("error"):
        return str(pod["error"])
    if pod.get("restored_pod"):
        return f"restored as {pod['restored_pod']}"
    return str(pod["reason"])


def _human(rep: dict[str, Any]) -> str:
    pods = rep["pods"]
    if rep["dry_run"]:
        text = table(("namespace", "pod", "action", "to", "reason"), [
            (p["namespace"], p["name"], p["action"], p["destination"] or "-", p["reason"])
            for p in pods])
        counts = ", ".join(f"{n} to {a}" for a, n in rep["summary"].items())
        return text + f"dry run, nothing changed: {counts or 'no pods on the node'}\n"
    text = table(("namespace", "pod", "action", "to", "outcome", "detail"), [
        (p["namespace"], p["name"], p["action"], p["destination"] or "-", p["outcome"],
         _detail(p)) for p in pods])
    hints = [f"  {p['namespace']}/{p['name']}: {p['hint']}" for p in pods if p.get("hint")]
    if hints:
        text += "hints:\n" + "\n".join(hints) + "\n"
    counts = ", ".join(f"{n} {o}" for o, n in rep["summary"].items()) or "no pods"
    return text + f"drain:        {rep['id']} ({rep['outcome']})\n" \
        f"pods:         {counts}\nAPI requests: {rep['api_requests']}\n"


def _finish(settings: Settings, cluster: Cluster, journal: Journal, output: Format,
            on_interrupt: OnInterrupt = OnInterrupt.stop) -> None:
    from migrate.adapters import kube
    from migrate.pipeline.drain import report, run

    try:
        run.execute(cluster, settings, journal, _progress if output is Format.table else _quiet)
    except KeyboardInterrupt:
        node = journal.request["node"]
        said = (_roll_back(settings, cluster, journal) if on_interrupt is OnInterrupt.rollback
                else f"interrupted: `migrate drain --resume {journal.id}` continues it, "
                f"`migrate rollback {journal.id}` undoes its migrations in flight and "
                f"uncordons {node}")
        stopped = report.report(journal)  # where each pod stands, for -o json too
        emit(stopped, output.value, lambda: _human(stopped))
        say(f"migrate: drain {journal.id} {said}")
        raise
    finally:
        kube.close(cluster)  # its queued Events: they exist once the command ends
        journal.unlock()
    rep = report.report(journal)
    emit(rep, output.value, lambda: _human(rep))
    if rep["failed"]:
        raise PartialFailure(
            f"drain of {rep['node']}: {len(rep['failed'])} of {len(rep['pods'])} pod(s) "
            f"not drained: {', '.join(rep['failed'][:5])}"
            f"{' ...' if len(rep['failed']) > 5 else ''}",
            hint=f"the report says why; `migrate drain --resume {journal.id}` tries the "
            "failed ones again; the node stays cordoned")


def _roll_back(settings: Settings, cluster: Cluster, journal: Journal) -> str:
    """--on-interrupt rollback: undo the migrations the interruption stopped half way and
    uncordon the node (as `migrate rollback ID` would); what became of the drain."""
    from migrate.pipeline.drain import run

    try:
        undone = run.rollback(cluster, settings, journal)
    except MigrateError as e:
        return (f"interrupted, and its rollback failed: {e.message}; `migrate rollback "
                f"{journal.id}` tries again")
    return "interrupted and rolled back: " + ("; ".join(undone) or "nothing was in flight")


def _check_movers(settings: Settings, req: Any, movers: int) -> None:
    """What the migrations need, before the cordon: a registry that answers, and a place
    to build their images (every pod is on the drained node)."""
    from migrate.pipeline.preflight import build_location, check_encryption, check_registry

    if not movers:
        return
    if req.registry is None:
        raise UsageError(f"{movers} pod(s) to migrate: say where their checkpoint images go "
                         "with --registry REG", hint="--dry-run shows the plan without one")
    build_on, _ = build_location(settings, req.node, req.build_on, req.tool_image)
    check_encryption(req.encrypt_for, build_on)
    check_registry(settings, {"": f"{req.registry.rstrip('/')}/drain-check:latest"})


def drain(
    ctx: typer.Context,
    node: str | None = typer.Argument(None, metavar="NODE", help="The node to drain.",
                                      show_default=False, autocompletion=complete_nodes),
    to: str | None = typer.Option(None, "--to", help="Send every migrated pod to this node.",
                                  show_default=False, autocompletion=complete_nodes),
    to_selector: str | None = typer.Option(None, "--to-selector", metavar="LABELS",
                                           help="Only nodes with these labels are "
                                           "destinations.", show_default=False),
    pod_selector: str | None = typer.Option(None, "--pod-selector", metavar="LABELS",
                                            help="Migrate only pods with these labels; the "
                                            "others are evicted (bare pods only with "
                                            "--force).", show_default=False),
    concurrency: int = typer.Option(4, "--concurrency", min=1, max=256,
                                    help="Pods moved or evicted at once."),
    timeout: float = typer.Option(300.0, "--timeout", min=1, help="Seconds each pod may "
                                  "take (budget waits, restore, eviction)."),
    evict_rest: bool = typer.Option(True, "--evict-rest/--skip-rest", help="Evict the pods "
                                    "that cannot migrate, or leave them on the node."),
    force: bool = typer.Option(False, "--force", help="Evict bare pods that cannot migrate "
                               "too: no controller starts them again (as kubectl drain "
                               "--force). Without it they stay, blocked."),
    delete_emptydir_data: bool = typer.Option(False, "--delete-emptydir-data", help="Migrate "
                                              "or evict pods with emptyDir volumes too: "
                                              "their data on the node is lost either way "
                                              "(as kubectl drain's flag). Without it they "
                                              "stay, blocked."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; change nothing."),
    registry: str | None = typer.Option(None, "--registry", help="Push checkpoint images "
                                        "under HOST:PORT/REPO.", show_default=False),
    build_on: BuildOn = typer.Option(BuildOn.auto, "--build-on", help="Where images are "
                                     "built (as for migrate pod)."),
    tool_image: str | None = typer.Option(None, "--tool-image", envvar="MIGRATE_TOOL_IMAGE",
                                          help="The migrate image, for --build-on node Jobs.",
                                          show_default=False),
    registry_secret: str | None = typer.Option(None, "--registry-secret", help="A "
                                               "dockerconfigjson Secret for node builds.",
                                               show_default=False),
    encrypt_for: list[str] = ENCRYPT_FOR,
    resume: str | None = typer.Option(None, "--resume", metavar="ID", help="Continue an "
                                      "interrupted drain (its id).", show_default=False,
                                      autocompletion=complete_drains),
    on_interrupt: OnInterrupt = typer.Option(
        OnInterrupt.stop, "--on-interrupt", help="What Ctrl-C or SIGTERM leaves: stop (the "
        "migrations in flight stop at a stage boundary; --resume goes on) or rollback (they "
        "are undone and the node uncordoned: for a drain whose journal does not outlive it, "
        "as in `migrate schedule drain`'s pod)."),
    authfile: Path | None = AUTHFILE,
    creds: str | None = CREDS,
    tls_verify: bool | None = typer.Option(None, "--tls-verify/--no-tls-verify",
                                           help="Verify the registry's TLS; "
                                           "--no-tls-verify also allows plain HTTP. "
                                           "Default: on (--resume: as the drain had it).",
                                           show_default=False),
    cert_dir: Path | None = CERT_DIR,
    kubeconfig: Path | None = KUBECONFIG,
    context: str | None = CONTEXT,
    output: Format = typer.Option(Format.table, "-o", "--output", help="Output format."),
) -> None:
    """Empty a node: cordon it, migrate its pods with their memory, evict the rest."""
    from migrate.adapters import kube
    from migrate.adapters.registry.reference import check_prefix
    from migrate.pipeline.drain import plan, report, run

    base = with_kube(ctx, kubeconfig, context, None)
    if resume is not None:
        if node is not None:
            raise UsageError("give NODE or --resume ID, not both")
        if resume.startswith("pod-"):
            raise UsageError(f"{resume} is a migration, not a drain",
                             hint=f"`migrate resume {resume}` continues it")
        journal = run.load(base, resume)
        if journal.outcome in ("succeeded", "rolled-back"):
            raise UsageError(f"drain {resume} has {journal.outcome}; nothing to resume")
        settings = with_recorded_registry(
            base, journal.registry, run=f"drain {resume}",
            command=f"migrate drain --resume {resume}", needs_registry=True,
            authfile=authfile, creds=creds, tls_verify=tls_verify, cert_dir=cert_dir)
        journal.lock()
        req = plan.DrainRequest.from_dict(journal.request)
        (_progress if output is Format.table else _quiet)(
            "drain", f"{journal.id}: resuming the drain of {req.node}")
        _finish(settings, kube.connect(settings.kube, pool_size=2 * req.concurrency + 4,
                                          background_events=True),
                journal, output, on_interrupt)
        return
    if node is None:
        raise UsageError("say which node to drain (or --resume ID)")
    settings = with_registry(base, authfile=authfile, creds=creds,
                             tls_verify=tls_verify is not False, cert_dir=cert_dir)
    if registry is not None:
        registry = check_prefix(registry)
    if to and to_selector:
        raise UsageError("--to and --to-selector exclude each other")
    req = plan.DrainRequest(node=node, to=to, to_selector=to_selector,
                            pod_selector=pod_selector, concurrency=concurrency,
                            timeout=timeout, evict_rest=evict_rest, dry_run=dry_run,
                            registry=registry, build_on=build_on,
                            tool_image=tool_image, registry_secret=registry_secret,
                            encrypt_for=tuple(encrypt_for), force=force,
                            delete_emptydir_data=delete_emptydir_data)
    cluster = kube.connect(settings.kube, pool_size=2 * concurrency + 4,
                           background_events=True)
    # Read-only: problems surface before the cordon.
    entries = plan.plan(cluster, req, settings.state_dir)
    if dry_run:
        rep = report.dry_run(req, entries)
        emit(rep, output.value, lambda: _human(rep))
        return
    _check_movers(settings, req, sum(e.action == "migrate" for e in entries))
    journal = run.start(settings, req)
    (_progress if output is Format.table else _quiet)("drain",
                                                      f"{journal.id}: draining {node}")
    _finish(settings, cluster, journal, output, on_interrupt)


def uncordon(
    ctx: typer.Context,
    node: str = typer.Argument(..., metavar="NODE", help="The node.", show_default=False,
                               autocompletion=complete_nodes),
    kubeconfig: Path | None = KUBECONFIG,
    context: str | None = CONTEXT,
    output: Format = typer.Option(Format.table, "-o", "--output", help="Output format."),
) -> None:
    """Make a node schedulable again (after a drain)."""
    from migrate.adapters import kube
    from migrate.pipeline.drain import run

    settings = with_kube(ctx, kubeconfig, context, None)
    was = run.uncordon(kube.connect(settings.kube), node)
    emit({"node": node, "was_cordoned": was}, output.value,
         lambda: f"node/{node} {'uncordoned' if was else 'already uncordoned'}\n")


def register(app: typer.Typer) -> None:
    """Attach the drain commands to the root app."""
    app.command("drain")(drain)
    app.command("uncordon")(uncordon)
