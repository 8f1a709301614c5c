"""The ``inferno`` command: one entry point composing every component.

Every option defaults to ``None`` meaning "not given", so settings fall through to the
environment, the YAML file and the defaults (see :mod:`inferno.core.config`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from inferno import __version__
from inferno.core.config import (
    BackendSettings,
    ComponentSettings,
    ProxySettings,
    S,
    ServeSettings,
    load_settings,
)
from inferno.core.errors import ConfigError

app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
                  help="Inferno: a self-healing cloud for AI inference.")
models_app = typer.Typer(no_args_is_help=True, help="Models that ship with Inferno's packages.")
app.add_typer(models_app, name="models")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file.")]
HostOpt = Annotated[str | None, typer.Option(help="Interface to bind. [default: 127.0.0.1]")]
OpsOpt = Annotated[int | None, typer.Option(help="Operations port. [default: 6100]")]
LogOpt = Annotated[str, typer.Option(help="Log level.")]


def _settings(cls: type[S], cli: dict[str, Any], config: Path | None) -> S:
    try:
        return load_settings(cls, cli=cli, config_file=config)
    except ConfigError as exc:
        typer.secho(f"error: {exc.message}", err=True, fg="red")
        raise typer.Exit(2) from exc


def _cli(values: dict[str, Any], cls: type[ComponentSettings]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k in cls.model_fields}


@app.command()
def backend(
    model: Annotated[str | None, typer.Option(help="Catalog id or GGUF path. "
                                              "[default: smollm2-135m]")] = None,
    engine: Annotated[str | None, typer.Option(help="llamacpp | fake")] = None,
    host: HostOpt = None,
    port: Annotated[int | None, typer.Option(help="Inference API port. [default: 8000]")] = None,
    ops_port: OpsOpt = None,
    served_name: Annotated[str | None, typer.Option(help="Model name clients use.")] = None,
    n_ctx: Annotated[int | None, typer.Option(help="Context window per sequence.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for the engine.")] = None,
    parallel: Annotated[int | None, typer.Option(help="Sequences generated at once.")] = None,
    node_id: Annotated[str | None, typer.Option(help="Node id. [default: host-pid]")] = None,
    discovery_lb: Annotated[str | None, typer.Option(
        help="Proxy ops address (host:port) to register with.")] = None,
    advertise_host: Annotated[str | None, typer.Option(
        help="Host the proxy should use to reach this node.")] = None,
    lease_seconds: Annotated[float | None, typer.Option(
        help="Lease the proxy grants per heartbeat. [default: 5]")] = None,
    heartbeat_interval: Annotated[float | None, typer.Option(
        help="Seconds between lease renewals. [default: 1]")] = None,
    fake_token_delay: Annotated[float | None, typer.Option(hidden=True)] = None,
    config: ConfigOpt = None,
    log_level: LogOpt = "info",
) -> None:
    """Run an inference node: load a model and serve the OpenAI API."""
    from inferno.backend.node import BackendNode
    from inferno.wiring import build_engine, configure_logging, run_service

    settings = _settings(BackendSettings, _cli(locals(), BackendSettings), config)
    configure_logging(log_level)
    try:
        engine = build_engine(settings)
    except ConfigError as exc:
        typer.secho(f"error: {exc.message}", err=True, fg="red")
        raise typer.Exit(2) from exc
    run_service(lambda: BackendNode(settings, engine))


@app.command()
def proxy(
    host: HostOpt = None,
    port: Annotated[int | None, typer.Option(help="API port. [default: 8080]")] = None,
    ops_port: OpsOpt = None,
    backends: Annotated[str | None, typer.Option(
        help="Static nodes, comma-separated host:port[/ops_port].")] = None,
    routing: Annotated[str | None, typer.Option(
        help="least-outstanding | round-robin")] = None,
    config: ConfigOpt = None,
    log_level: LogOpt = "info",
) -> None:
    """Run the OpenAI-compatible gateway in front of the nodes."""
    from inferno.proxy.gateway import Gateway
    from inferno.wiring import configure_logging, run_service

    settings = _settings(ProxySettings, _cli(locals(), ProxySettings), config)
    configure_logging(log_level)
    run_service(lambda: Gateway(settings))


@app.command()
def serve(
    host: HostOpt = None,
    port: Annotated[int | None, typer.Option(help="Proxy API port. [default: 8080]")] = None,
    ops_port: OpsOpt = None,
    nodes: Annotated[int | None, typer.Option(help="Backend nodes to start. [default: 2]")] = None,
    model: Annotated[str | None, typer.Option(help="Model for every node.")] = None,
    engine: Annotated[str | None, typer.Option(help="llamacpp | fake")] = None,
    threads: Annotated[int | None, typer.Option(help="Threads per node. [default: 1]")] = None,
    parallel: Annotated[int | None, typer.Option(help="Sequences per node.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Everything on this machine: a proxy and local nodes with the bundled model."""
    from inferno.serve import run_serve

    settings = _settings(ServeSettings, _cli(locals(), ServeSettings), config)
    sys.exit(run_serve(settings, config))


@models_app.command("list")
def models_list() -> None:
    """Models Inferno can resolve by short id, and whether they are installed."""
    from rich.console import Console
    from rich.table import Table

    from inferno.models.catalog import CATALOG, resolve_model

    table = Table("id", "file", "status")
    for entry in CATALOG.values():
        try:
            path = resolve_model(entry.id).path
            table.add_row(entry.id, str(path), f"installed ({path.stat().st_size / 1e6:.0f} MB)")
        except ConfigError:
            table.add_row(entry.id, entry.filename, f"missing: {entry.install}")
    Console().print(table)


@app.command()
def version() -> None:
    """Print Inferno's version."""
    typer.echo(__version__)


def main() -> None:
    app()
