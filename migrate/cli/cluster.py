"""Commands that talk to the cluster: checkpoint, doctor."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from migrate.cli.completion import complete_nodes, complete_pods
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
    pod: str = typer.Argument(..., help="Pod name.", metavar="POD", show_default=False,
                              autocompletion=complete_pods),
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
    text += f"\n{n['pass']} passed, {warnings}, {n['fail']} failed, {n['skip']} skipped\n"
    if report.probes is not None:
        text += "\n" + _probe_table(report)
    return text


def _probe_table(report: DoctorReport) -> str:
    from migrate.pipeline.probe import STAGES

    probes = report.probes or []

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f} s"

    rows = [(r.status, r.node, r.source or "-", r.stage or "-",
             *(seconds(r.seconds.get(s)) for s in STAGES)) for r in probes]
    text = table(("probe", "node", "from", "failed at", *STAGES), rows)
    lines = []
    for r in probes:
        if r.status != "PASS":
            lines += [f"  {r.node}: {r.message}"] + ([f"    hint: {r.hint}"] if r.hint else [])
        lines += [f"  {r.node}: left behind: {left}" for left in r.leftovers]
    if lines:
        text += "\n" + "\n".join(lines) + "\n"
    passed = sum(r.status == "PASS" for r in probes)
    return text + f"\nprobes: {passed} passed, {len(probes) - passed} failed\n"


def doctor(
    ctx: typer.Context,
    node: list[str] = typer.Option([], "--node", help="Check only these nodes "
                                   "(repeatable) (default: every node); for these, also how "
                                   "many images their kubelet pulls at once.", show_default=False,
                                   autocompletion=complete_nodes),
    registry: str | None = typer.Option(None, "--registry", help="Registry to check: "
                                        "HOST:PORT/REPOSITORY (port and repository optional).",
                                        show_default=False),
    authfile: Path | None = AUTHFILE,
    creds: str | None = CREDS,
    tls_verify: bool = TLS_VERIFY,
    cert_dir: Path | None = CERT_DIR,
    probe: list[str] = typer.Option([], "--probe", metavar="NODE", help="Prove a destination "
                                    "end to end: checkpoint a probe pod on another node, push "
                                    "its image to --registry, restore it on NODE, delete "
                                    "everything (repeatable, or NODE,NODE).",
                                    show_default=False, autocompletion=complete_nodes),
    probe_image: str | None = typer.Option(None, "--probe-image", help="The probe pod's image "
                                           "(default: the pause image the source node "
                                           "holds).", show_default=False),
    probe_source: str | None = typer.Option(None, "--probe-source", metavar="NODE",
                                            help="Where the probe pod runs (default: a Ready "
                                            "CRI-O node that can checkpoint).",
                                            show_default=False,
                                            autocompletion=complete_nodes),
    timeout: float = typer.Option(120.0, "--timeout", min=1, help="With --probe: seconds for "
                                  "each wait (probe pod, build Job, restored pod)."),
    tool_image: str | None = typer.Option(None, "--tool-image", envvar="MIGRATE_TOOL_IMAGE",
                                          help="With --probe: the migrate image, for a build "
                                          "Job when archives are not readable here.",
                                          show_default=False),
    encrypt_for: list[str] = typer.Option(
        [], "--encrypt-for", metavar="jwe:PUBLIC_KEY_FILE", show_default=False,
        help="With --probe: encrypt the probe image for this public key (repeatable), as "
        "migrate pod --encrypt-for does: the restore proves the node can decrypt."),
    kubeconfig: Path | None = KUBECONFIG,
    context: str | None = CONTEXT,
    namespace: str | None = NAMESPACE,
    output: Format = typer.Option(Format.table, "-o", "--output", help="Output format."),
) -> None:
    """Preflight checks: API version, RBAC, node runtimes, registry, buildah; with --probe,
    a real checkpoint and restore onto each node given.

    Exits 9 when a check FAILs or a probe fails (WARN rows do not fail the run).
    """
    from migrate.errors import UsageError
    from migrate.pipeline.doctor import DoctorRequest
    from migrate.pipeline.doctor import doctor as run
    from migrate.pipeline.probe import ProbeRequest

    settings = with_registry(with_kube(ctx, kubeconfig, context, namespace),
                             authfile=authfile, creds=creds, tls_verify=tls_verify,
                             cert_dir=cert_dir)
    probed = tuple(n.strip() for value in probe for n in value.split(",") if n.strip())
    if probe and registry is None:
        raise UsageError("--probe needs --registry REG: the probe pushes its checkpoint "
                         "image there", hint="the registry the migrations will use")
    if (probe_image or probe_source) and not probe:
        raise UsageError("--probe-image and --probe-source go with --probe NODE")
    if encrypt_for and not probe:
        raise UsageError("--encrypt-for goes with --probe NODE: it encrypts the probe image",
                         hint="migrate doctor --registry REG --probe NODE --encrypt-for "
                         "jwe:PUBLIC_KEY_FILE")
    if encrypt_for:  # the key files are read now: a bad one fails before any probe
        from migrate.pipeline.preflight import check_encryption

        check_encryption(tuple(encrypt_for), "local")
    request = ProbeRequest(nodes=probed, registry=registry or "", image=probe_image,
                           source=probe_source, timeout=timeout, tool_image=tool_image,
                           encrypt_for=tuple(encrypt_for)) if probe else None
    report = run(settings, DoctorRequest(nodes=tuple(node), registry=registry, probe=request))
    emit(report.to_dict(), output.value, lambda: _doctor_table(report))
    failed = report.to_dict()["summary"]["fail"]
    probes_failed = report.probes_failed
    if failed or probes_failed:
        what = [f"{failed} check{'s' if failed > 1 else ''}"] if failed else []
        what += [f"{probes_failed} probe{'s' if probes_failed > 1 else ''}"] \
            if probes_failed else []
        raise ChecksFailed(f"{' and '.join(what)} failed",
                           hint="each FAIL row has a hint; fix those and run migrate doctor "
                           "again")


def register(app: typer.Typer) -> None:
    """Attach the cluster commands to the root app."""
    app.command("checkpoint")(checkpoint)
    app.command("doctor")(doctor)
