"""Commands that talk to the cluster: checkpoint, doctor."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from migrate.cli.options import (
    AUTHFILE,
    CERT_DIR,
    CONTEXT,
    CREDS,
    KUBECONFIG,
    NAMESPACE,
    TLS_VERIFY,
    with_kube,
    with_registry,
)
from migrate.cli.output import Format, emit, table
from migrate.errors import ChecksFailed

if TYPE_CHECKING:
    from migrate.pipeline.doctor import DoctorReport

# The kubernetes client (~0.3 s to import) loads when a cluster command runs.

class Via(StrEnum):
    """How to reach the kubelet's checkpoint API."""

    apiserver = "apiserver"
    kubelet = "kubelet"


def checkpoint(
    ctx: typer.Context,
    pod: str = typer.Argument(..., help="Pod name.", metavar="POD", show_default=False),
    container: str | None = typer.Option(None, "-c", "--container", help="Container "
                                         "(default: the pod's default or only one).",
                                         show_default=False),
    timeout: int | None = typer.Option(None, "--timeout", min=1, help="Seconds the runtime "
                                       "may take (default: its own).", show_default=False),
    via: Via = typer.Option(Via.apiserver, "--via", help="Through the API server's node "
                            "proxy, or to the kubelet directly."),
    kubelet_url: str | None = typer.Option(None, "--kubelet-url", help="With --via kubelet: "
                                           "https://NODE:10250.", show_default=False),
    cert: Path | None = typer.Option(None, "--cert", help="Client certificate for the kubelet.",
                                     show_default=False),
    key: Path | None = typer.Option(None, "--key", help="Its private key.", show_default=False),
    ca: Path | None = typer.Option(None, "--ca", help="CA of the kubelet's serving certificate.",
                                   show_default=False),
    kubeconfig: Path | None = KUBECONFIG,
    context: str | None = CONTEXT,
    namespace: str | None = NAMESPACE,
    output: Format = typer.Option(Format.table, "-o", "--output", help="Output format."),
) -> None:
    """Checkpoint a running container; the archive stays on the pod's node."""
    from migrate.adapters import kube
    from migrate.adapters.kubelet import KubeletEndpoint
    from migrate.pipeline.checkpoint import CheckpointRequest
    from migrate.pipeline.checkpoint import checkpoint as run

    settings = with_kube(ctx, kubeconfig, context, namespace)
    endpoint = (KubeletEndpoint(kubelet_url, cert, key, ca)
                if kubelet_url and cert and key else None)
    result = run(kube.connect(settings.kube), CheckpointRequest(
        pod=pod, namespace=namespace, container=container, timeout=timeout, via=via.value,
        kubelet=endpoint))
    emit(result.to_dict(), output.value, lambda: table(
        ("node", "pod", "container", "archive", "time"),
        [(result.node, f"{result.namespace}/{result.pod}", result.container, result.archive,
          f"{result.seconds:.3f} s")]))


def _doctor_table(report: DoctorReport) -> str:
    rows = [(c.status.value, c.name, c.detail) for c in report.checks]
    text = table(("status", "check", "detail"), rows)
    hints = [f"  {c.name}: {c.hint}" for c in report.checks
             if c.hint and c.status.value in ("WARN", "FAIL")]
    if hints:
        text += "\nhints:\n" + "\n".join(hints) + "\n"
    n = report.to_dict()["summary"]
    warnings = f"{n['warn']} warning" + ("" if n["warn"] == 1 else "s")
    return text + f"\n{n['pass']} passed, {warnings}, {n['fail']} failed, {n['skip']} skipped\n"


def doctor(
    ctx: typer.Context,
    node: list[str] = typer.Option([], "--node", help="Check only these nodes "
                                   "(repeatable) (default: every node).", show_default=False),
    registry: str | None = typer.Option(None, "--registry", help="Registry to check: "
                                        "HOST:PORT/REPOSITORY (port and repository optional).",
                                        show_default=False),
    authfile: Path | None = AUTHFILE,
    creds: str | None = CREDS,
    tls_verify: bool = TLS_VERIFY,
    cert_dir: Path | None = CERT_DIR,
    kubeconfig: Path | None = KUBECONFIG,
    context: str | None = CONTEXT,
    namespace: str | None = NAMESPACE,
    output: Format = typer.Option(Format.table, "-o", "--output", help="Output format."),
) -> None:
    """Preflight checks: API version, RBAC, node runtimes, registry, buildah.

    Exits 9 when a check FAILs (WARN rows do not fail the run).
    """
    from migrate.pipeline.doctor import DoctorRequest
    from migrate.pipeline.doctor import doctor as run

    settings = with_registry(with_kube(ctx, kubeconfig, context, namespace),
                             authfile=authfile, creds=creds, tls_verify=tls_verify,
                             cert_dir=cert_dir)
    report = run(settings, DoctorRequest(nodes=tuple(node), registry=registry))
    emit(report.to_dict(), output.value, lambda: _doctor_table(report))
    failed = report.to_dict()["summary"]["fail"]
    if failed:
        raise ChecksFailed(f"{failed} check{'s' if failed > 1 else ''} failed",
                           hint="each FAIL row has a hint; fix those and run migrate doctor "
                           "again")


def register(app: typer.Typer) -> None:
    """Attach the cluster commands to the root app."""
    app.command("checkpoint")(checkpoint)
    app.command("doctor")(doctor)
