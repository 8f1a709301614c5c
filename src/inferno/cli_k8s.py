"""``inferno k8s``: Kubernetes mode — the CRDs, the manifests, and the operator."""

from __future__ import annotations

import sys
from pathlib import Path
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
        "--namespace", "-n", envvar="INFERNO_K8S_NAMESPACE",
        help="Namespace to watch (repeatable).")] = None,
    all_namespaces: Annotated[bool, typer.Option(
        "--all-namespaces", "-A", help="Watch every namespace.")] = False,
    proxy_ops: Annotated[str, typer.Option(
        "--proxy-ops", envvar="INFERNO_K8S_PROXY_OPS",
        help="The proxy's ops address (host:port) nodes register with.")
    ] = "inferno-proxy:6100",
    image: Annotated[str | None, typer.Option(
        "--image", envvar="INFERNO_K8S_IMAGE", help="Image of nodes and model-pull Jobs.")
    ] = None,
    node_token_secret: Annotated[str | None, typer.Option(
        "--node-token-secret", envvar="INFERNO_K8S_NODE_TOKEN_SECRET",
        help="Secret node pods read their registration token from.")] = None,
    node_token_key: Annotated[str, typer.Option(
        "--node-token-key", envvar="INFERNO_K8S_NODE_TOKEN_KEY",
        help="That Secret's key.")] = "token",
    node_token: Annotated[str | None, typer.Option(
        envvar="INFERNO_K8S_NODE_TOKEN", hidden=True,
        help="The node token, for the proxy's PUT /standby (from the environment only).")
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
        run(OperatorConfig(proxy_ops=proxy_ops, image=image or DEFAULT_IMAGE,
                           node_token_secret=node_token_secret, node_token_key=node_token_key,
                           node_token=node_token),
            namespaces=list(namespace or []), clusterwide=all_namespaces, liveness=liveness)
    except ConfigError as exc:
        typer.secho(f"error: {exc.message}", err=True, fg="red")
        raise typer.Exit(2) from exc
@k8s_app.command("render")
def render_cmd(
    values: Annotated[Path | None, typer.Option(
        "--values", "-f", help="Values YAML (the Helm chart's values.yaml schema).")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="key.path=value, as Helm's --set (repeatable; after --values).")] = None,
    namespace: Annotated[str | None, typer.Option(
        help="Namespace of every object. [default: inferno]")] = None,
    output: Annotated[str, typer.Option(
        "--output", "-o", help="- (stdout, one YAML stream) or a directory: crds.yaml and "
                               "inferno.yaml, for `kubectl apply -f DIR`.")] = "-",
    crds: Annotated[bool, typer.Option(
        "--crds/--no-crds", help="Include the CustomResourceDefinitions.")] = True,
) -> None:
    """Print every manifest of an install (what the Helm chart installs), without Helm."""
    from pydantic import ValidationError

    from inferno.k8s.render import apply_set, dump_yaml, render, write_manifests
    from inferno.k8s.values import RenderValues

    try:
        data = yaml.safe_load(values.read_text()) if values else {}
        if not isinstance(data, dict):
            raise ValueError(f"{values}: expected a mapping of values")
        for assignment in set_ or []:
            apply_set(data, assignment)
        if namespace is not None:
            data["namespace"] = namespace
        objects = render(RenderValues.model_validate(data), crds=crds)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            where = ".".join(str(p) for p in err["loc"]) or "values"
            typer.secho(f"error: invalid value '{where}': {err['msg']}", err=True, fg="red")
        raise typer.Exit(2) from exc
    except (OSError, yaml.YAMLError, ValueError) as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(2) from exc
    if output == "-":
        sys.stdout.write(dump_yaml(objects))
        return
    for path in write_manifests(objects, Path(output)):
        typer.echo(f"wrote {path}", err=True)
