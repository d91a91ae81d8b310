"""Options several commands share, and how they fold into the settings."""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from migrate.cli.completion import complete_namespaces
from migrate.settings import Settings


class ManifestFormat(StrEnum):
    """How rendered objects print: YAML (for kubectl apply -f -) or JSON."""

    yaml = "yaml"
    json = "json"

AUTHFILE = typer.Option(None, "--authfile", help="Registry credentials file "
                        "(auth.json / docker config.json).")
CREDS = typer.Option(None, "--creds", help="USER:PASSWORD for the registry.",
                     metavar="USER:PASS")
TLS_VERIFY = typer.Option(True, "--tls-verify/--no-tls-verify",
                          help="Verify the registry's TLS; --no-tls-verify also allows plain "
                          "HTTP.")
TLS_VERIFY_AGAIN = typer.Option(None, "--tls-verify/--no-tls-verify",
                                help="Verify the registry's TLS; --no-tls-verify also allows "
                                "plain HTTP. Default: as the run being resumed had it.",
                                show_default=False)
KUBECONFIG = typer.Option(None, "--kubeconfig", help="Kubeconfig file (default: $KUBECONFIG, "
                          "~/.kube/config, or the in-cluster service account).",
                          show_default=False)
CONTEXT = typer.Option(None, "--context", help="Kubeconfig context.", show_default=False)
NAMESPACE = typer.Option(None, "-n", "--namespace", help="Namespace (default: the context's).",
                         show_default=False, autocompletion=complete_namespaces)
ENCRYPT_FOR = typer.Option([], "--encrypt-for", metavar="jwe:PUBLIC_KEY_FILE",
                           help="Encrypt the layer (OCI image encryption) for this recipient's "
                           "public key (RSA or EC, PEM); repeat for each destination node.",
                           show_default=False)
CERT_DIR = typer.Option(None, "--cert-dir", help="Registry CA certificates (*.crt) and "
                        "client pair (*.cert, *.key).")


def _check_cert_dir(cert_dir: Path | None) -> None:
    """A --cert-dir that is not a directory is a mistake to say now: skipped, the TLS
    failure it leads to would ask for the very option given."""
    if cert_dir is not None and not cert_dir.is_dir():
        from migrate.errors import NotFoundError

        raise NotFoundError(f"--cert-dir {cert_dir}: no such directory",
                            hint="give the directory holding the registry's CA (*.crt) and "
                            "client pair (*.cert, *.key)")


def with_registry(base: Settings, *, authfile: Path | None, creds: str | None,
                  tls_verify: bool, cert_dir: Path | None) -> Settings:
    """``base`` with the registry options of one command applied."""
    from migrate.adapters.registry.auth import parse_creds

    _check_cert_dir(cert_dir)
    return dataclasses.replace(base, registry=dataclasses.replace(
        base.registry, tls_verify=tls_verify, cert_dir=cert_dir, authfile=authfile,
        creds=parse_creds(creds) if creds is not None else None))


def with_recorded_registry(base: Settings, recorded: dict[str, Any], *, run: str, command: str,
                           needs_registry: bool, authfile: Path | None, creds: str | None,
                           tls_verify: bool | None, cert_dir: Path | None) -> Settings:
    """``base`` with the registry settings a journal recorded, the options given winning
    (see migrate.pipeline.trust)."""
    from migrate.adapters.registry.auth import parse_creds
    from migrate.pipeline import trust

    _check_cert_dir(cert_dir)
    given = trust.Given(tls_verify=tls_verify, cert_dir=cert_dir, authfile=authfile,
                        creds=parse_creds(creds) if creds is not None else None)
    return dataclasses.replace(base, registry=trust.resumed(
        base.registry, recorded, given, run=run, command=command,
        needs_registry=needs_registry))


def with_kube(ctx: typer.Context, kubeconfig: Path | None, context: str | None,
              namespace: str | None) -> Settings:
    """The root settings (``ctx.obj``) with one command's cluster options applied; those
    given before the command (``migrate --context X doctor``) hold where it gives none."""
    base: Settings = ctx.obj
    kube = base.kube
    return dataclasses.replace(base, kube=dataclasses.replace(
        kube, kubeconfig=kubeconfig or kube.kubeconfig, context=context or kube.context,
        namespace=namespace or kube.namespace))
