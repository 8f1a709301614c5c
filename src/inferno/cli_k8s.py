"""``inferno k8s``: Kubernetes mode — the CRDs, the manifests, and the operator."""

from __future__ import annotations

import sys

import typer
import yaml

k8s_app = typer.Typer(no_args_is_help=True,
                      help="Run Inferno on Kubernetes: CRDs, manifests, the operator.")


@k8s_app.command("crds")
def crds() -> None:
    """Print Inferno's CustomResourceDefinitions (YAML, for `kubectl apply -f -`)."""
    from inferno.k8s.crds import all_crds

    yaml.safe_dump_all(all_crds(), sys.stdout, sort_keys=False)
