"""``inferno k8s``: Kubernetes mode — the CRDs, the manifests, and the operator."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
import yaml

k8s_app = typer.Typer(no_args_is_help=True,
                      help="Run Inferno on Kubernetes: CRDs, manifests, the operator.")


@k8s_app.command("crds")
def crds() -> None:
    """Print Inferno's CustomResourceDefinitions (YAML, for `kubectl apply -f -`)."""
    from inferno.k8s.crds import all_crds

    yaml.safe_dump_all(all_crds(), sys.stdout, sort_keys=False)


@k8s_app.command("operator")
def operator(
    namespace: Annotated[list[str] | None, typer.Option(
        "--namespace", "-n", help="Namespace to watch (repeatable).")] = None,
    all_namespaces: Annotated[bool, typer.Option(
        "--all-namespaces", "-A", help="Watch every namespace.")] = False,
    proxy_ops: Annotated[str, typer.Option(
        "--proxy-ops", envvar="INFERNO_K8S_PROXY_OPS",
        help="The proxy's ops address (host:port) nodes register with.")
    ] = "inferno-proxy:6100",
    image: Annotated[str | None, typer.Option(
        "--image", envvar="INFERNO_K8S_IMAGE", help="Image of nodes and model-pull Jobs.")
    ] = None,
    liveness: Annotated[str | None, typer.Option(
        "--liveness", help="Liveness endpoint, e.g. http://0.0.0.0:8080/healthz.")] = None,
) -> None:
    """Run the operator: reconcile Inferno's resources into Deployments, Services, Jobs."""
    if bool(namespace) == all_namespaces:
        typer.secho("error: give --namespace NS (repeatable) or --all-namespaces",
                    err=True, fg="red")
        raise typer.Exit(2)
    from inferno.core.errors import ConfigError
    from inferno.k8s.objects import DEFAULT_IMAGE
    from inferno.k8s.operator import OperatorConfig, run

    try:
        run(OperatorConfig(proxy_ops=proxy_ops, image=image or DEFAULT_IMAGE),
            namespaces=list(namespace or []), clusterwide=all_namespaces, liveness=liveness)
    except ConfigError as exc:
        typer.secho(f"error: {exc.message}", err=True, fg="red")
        raise typer.Exit(2) from exc
