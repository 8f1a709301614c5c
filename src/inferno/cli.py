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
from inferno.cli_audit import audit_app
from inferno.cli_batch import batch_app
from inferno.cli_k8s import k8s_app
from inferno.cli_models import models_app
from inferno.core.config import (
    BackendSettings,
    BatchSettings,
    ComponentSettings,
    GovernatorSettings,
    ProxySettings,
    ServeSettings,
)
from inferno.core.errors import ConfigError, EngineError
from inferno.core.settings import S, load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
                  help="Inferno: a self-healing cloud for AI inference.")
app.add_typer(models_app, name="models")
app.add_typer(batch_app, name="batch")
governator_app = typer.Typer(help="Keep the fleet just big enough for its targets, cheaply.")
app.add_typer(governator_app, name="governator")
keys_app = typer.Typer(no_args_is_help=True, help="API keys of the proxy (stored hashed).")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
app.add_typer(k8s_app, name="k8s")

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
    model: Annotated[list[str] | None, typer.Option(
        help="Catalog id or GGUF path, loaded at start; repeat it (or a,b) to serve several. "
             "[default: smollm2-135m]")] = None,
    models_available: Annotated[list[str] | None, typer.Option(
        "--models-available", help="Models this node may load on demand (repeatable).")
    ] = None,
    keep_alive: Annotated[str | None, typer.Option(
        help="How long a model loaded at run time stays idle before unloading: 300, 5m, "
             "-1 (forever), 0 (after each request). [default: 5m]")] = None,
    memory_budget: Annotated[int | None, typer.Option(
        help="Bytes the loaded models may take; LRU idle models are evicted. 0: no limit.")
    ] = None,
    engine: Annotated[str | None, typer.Option(
        help="llamacpp | onnx | openai | gemini | fake")] = None,
    host: HostOpt = None,
    port: Annotated[int | None, typer.Option(help="Inference API port. [default: 8000]")] = None,
    ops_port: OpsOpt = None,
    served_name: Annotated[str | None, typer.Option(help="Model name clients use.")] = None,
    n_ctx: Annotated[int | None, typer.Option(help="Context window per sequence.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for the engine.")] = None,
    parallel: Annotated[int | None, typer.Option(help="Sequences generated at once.")] = None,
    quantize: Annotated[str | None, typer.Option(
        help="llamacpp: serve a converted copy of the GGUF, built once and cached: auto "
             "(q8_0 for a small Q4_1/Q5_1 model with --parallel > 1, else native) | native | "
             "q8_0 (batches better, near-lossless) | q5_0 | q4_0 | iq4_nl | f16. "
             "[default: auto]")] = None,
    gpu_layers: Annotated[int | None, typer.Option(
        help="llamacpp on a GPU build: layers offloaded to the GPU (-1: all). "
             "[default: 0]")] = None,
    prefix_cache: Annotated[bool | None, typer.Option(
        "--prefix-cache/--no-prefix-cache",
        help="llamacpp: reuse the KV of shared prompt prefixes across requests. "
             "[default: on]")] = None,
    prefill_hold_ms: Annotated[float | None, typer.Option(
        help="llamacpp: how long generating sequences may pause while new prompts are "
             "prefilled (faster first tokens for a burst; 0: never). [default: 200]")] = None,
    node_id: Annotated[str | None, typer.Option(help="Node id. [default: host-pid]")] = None,
    discovery_lb: Annotated[str | None, typer.Option(
        help="Proxy ops address (host:port) to register with.")] = None,
    advertise_host: Annotated[str | None, typer.Option(
        help="Host the proxy should use to reach this node.")] = None,
    lease_seconds: Annotated[float | None, typer.Option(
        help="Lease the proxy grants per heartbeat. [default: 30]")] = None,
    heartbeat_interval: Annotated[float | None, typer.Option(
        help="Seconds between lease renewals (jittered, at most a third of the lease). "
             "[default: 10]")] = None,
    fake_token_delay: Annotated[float | None, typer.Option(hidden=True)] = None,
    data_dir: Annotated[Path | None, typer.Option(
        help="Cache for built artefacts (ONNX graphs). [default: ~/.cache/inferno]")] = None,
    embed_batch_size: Annotated[int | None, typer.Option(
        help="Embedding engines: texts per model call. [default: 32]")] = None,
    embed_batch_wait: Annotated[float | None, typer.Option(
        help="Embedding engines: seconds an idle model waits to fill a batch.")] = None,
    remote_url: Annotated[str | None, typer.Option(
        help="Remote engines: the provider's base URL (http://host:port/v1, https://...).")
    ] = None,
    remote_model: Annotated[str | None, typer.Option(
        help="Remote engines: the provider's model name. [default: --model]")] = None,
    api_key_env: Annotated[str | None, typer.Option(
        help="Remote engines: environment variable holding the provider's API key.")] = None,
    price_per_mtok_input: Annotated[float | None, typer.Option(
        help="USD per million input tokens, reported for cost-aware routing.")] = None,
    price_per_mtok_output: Annotated[float | None, typer.Option(
        help="USD per million output tokens, reported for cost-aware routing.")] = None,
    config: ConfigOpt = None,
    log_level: LogOpt = "info",
) -> None:
    """Run an inference node: load a model and serve the OpenAI API."""
    from inferno.backend.node import BackendNode
    from inferno.wiring import build_engine, configure_logging, run_service

    settings = _settings(BackendSettings, _cli(locals(), BackendSettings), config)
    configure_logging(log_level)
    try:
        _prebuild_weights(settings)
        node = BackendNode(settings, build_engine=lambda ref: build_engine(settings, ref))
    except (ConfigError, EngineError) as exc:
        typer.secho(f"error: {exc.message}", err=True, fg="red")
        raise typer.Exit(2) from exc
    run_service(lambda: node)


def _prebuild_weights(settings: BackendSettings) -> None:
    """Build (or find) the --quantize copy before serving, with a status line on stderr.

    The engine would build it at load too; doing it here shows progress on a terminal
    instead of a node that says "loading" for a while.
    """
    if settings.engine != "llamacpp" or settings.quantize == "native":
        return
    from rich.console import Console

    from inferno.models.catalog import resolve_model
    from inferno.models.quantize import choose_weights, default_data_dir, ensure_quantized

    console = Console(stderr=True)
    for ref in settings.model:
        source = resolve_model(ref).path
        target: str = settings.quantize
        if target == "auto":
            target, why = choose_weights(source, parallel=settings.parallel,
                                         gpu_layers=settings.gpu_layers)
            if target == "native":
                continue
            console.print(f"[green]✓[/] quantize auto: {target} ({why})")
        with console.status(f"[bold]{target}[/] weights for {source.name}") as st:
            def show(msg: str, st: Any = st, target: str = target) -> None:
                st.update(f"[bold]{target}[/] {msg}")

            path = ensure_quantized(source, target, settings.data_dir or default_data_dir(),
                                    threads=settings.threads, status=show)
        console.print(f"[green]✓[/] {target} weights: {path}")


@app.command()
def proxy(
    host: HostOpt = None,
    port: Annotated[int | None, typer.Option(help="API port. [default: 8080]")] = None,
    ops_port: OpsOpt = None,
    backends: Annotated[str | None, typer.Option(
        help="Static nodes, comma-separated: host:port, or host:port/ops_port.")] = None,
    routing: Annotated[str | None, typer.Option(
        help="least-outstanding | round-robin")] = None,
    auth: Annotated[str | None, typer.Option(
        help="auto | on | none (none on a public interface: anyone may call). "
             "[default: auto]")] = None,
    ops_health: Annotated[str | None, typer.Option(
        help="Where ops /health is answered: process (a small front process, fast even "
             "when the proxy is saturated) | thread | loop. [default: process]")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Proxy processes sharing the API port (one ops port for all). 0: one per "
             "core, at most the container's CPU limit. [default: 0]")] = None,
    config: ConfigOpt = None,
    log_level: LogOpt = "info",
) -> None:
    """Run the OpenAI-compatible gateway in front of the nodes."""
    from inferno.wiring import build_proxy, configure_logging, run_service

    settings = _settings(ProxySettings, _cli(locals(), ProxySettings), config)
    batch = _settings(BatchSettings, {}, config)
    configure_logging(log_level)
    try:
        run_service(lambda: build_proxy(settings, batch, log_level=log_level))
    except ConfigError as exc:  # e.g. a public bind without auth, a bad JWT key
        typer.secho(f"error: {exc.message}", err=True, fg="red")
        raise typer.Exit(2) from exc


@batch_app.command("worker")
def batch_worker(
    proxy_url: Annotated[str | None, typer.Option(
        help="The proxy items are sent to. [default: http://127.0.0.1:8080]")] = None,
    workers: Annotated[int | None, typer.Option(help="Items in flight at once.")] = None,
    config: ConfigOpt = None,
    log_level: LogOpt = "info",
) -> None:
    """Run batch items from the proxy's store (its database_url) against the proxy, as
    each batch's owner: an admin key in INFERNO_BATCH_API_KEY acts on their behalf."""
    from inferno.batch.worker import BatchWorker
    from inferno.wiring import configure_logging, run_service

    settings = _settings(BatchSettings, _cli(locals(), BatchSettings), config)
    configure_logging(log_level)
    run_service(lambda: BatchWorker(settings))


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="What the key is for.")],
    scope: Annotated[str, typer.Option(help="admin | user")] = "user",
    models: Annotated[list[str] | None, typer.Option(
        help="Models the key may use (repeat; default: all).")] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Create an API key; it is printed once and only its hash is stored."""
    from inferno.proxy.security import manage

    settings = _settings(ProxySettings, {}, config)
    if scope not in ("admin", "user"):
        typer.secho("error: --scope must be admin or user", err=True, fg="red")
        raise typer.Exit(2)
    key, row = manage.create(settings, name=name, scope=scope, models=models, rpm=rpm, tpm=tpm)
    typer.secho(f"Created key {row.id} ({scope}). Store it now; it is not shown again:",
                err=True, fg="green")
    typer.echo(key)


@keys_app.command("list")
def keys_list(config: ConfigOpt = None) -> None:
    """List API keys by prefix (never the key or its hash)."""
    import time

    from rich.console import Console
    from rich.table import Table

    from inferno.proxy.security import manage
    from inferno.proxy.security.keys import display

    table = Table("id", "prefix", "name", "scope", "models", "rpm", "tpm", "created", "status")
    for r in manage.list_keys(_settings(ProxySettings, {}, config)):
        table.add_row(r.id, display(r.id), r.name, r.scope, ",".join(r.models or []) or "all",
                      str(r.rpm or "-"), str(r.tpm or "-"),
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created_at)),
                      "revoked" if r.revoked_at else "active")
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="Key id or prefix.")],
                config: ConfigOpt = None) -> None:
    """Revoke a key (running proxies stop accepting it within a second)."""
    from inferno.proxy.security import manage

    if not manage.revoke(_settings(ProxySettings, {}, config), key_id):
        typer.secho(f"error: no active key {key_id}", err=True, fg="red")
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")


@app.command()
def usage(
    since: Annotated[str | None, typer.Option(help="First day, YYYY-MM-DD (UTC).")] = None,
    until: Annotated[str | None, typer.Option(help="Last day, YYYY-MM-DD (UTC).")] = None,
    key: Annotated[str | None, typer.Option(help="Only this key id.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Tokens, requests and cost per key, model and day, from the request log."""
    from rich.console import Console
    from rich.table import Table

    from inferno.proxy.security import manage

    rows = manage.usage(_settings(ProxySettings, {}, config), since=since, until=until,
                        key_id=key)
    table = Table("day", "key", "model", "requests", "errors", "prompt tok", "completion tok",
                  "cache hits", "cost $")
    for u in rows:
        table.add_row(u.day, u.key_id or "(no key)", u.model or "-", str(u.requests),
                      str(u.errors), str(u.prompt_tokens), str(u.completion_tokens),
                      str(u.cache_hits), f"{u.cost:.6f}")
    Console().print(table)


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
    # The governator owns node lifecycle: --nodes is the minimum, governator.max_replicas the max.
    gov = _settings(GovernatorSettings, {}, config)
    sys.exit(run_serve(settings, gov, config))


@governator_app.callback(invoke_without_command=True)
def governator(ctx: typer.Context) -> None:
    """Keep the fleet just big enough for its targets (bare command: same as `run`)."""
    if ctx.invoked_subcommand is None:
        governator_run()


@governator_app.command("run")
def governator_run(
    proxy_ops: Annotated[str | None, typer.Option(
        help="Proxy ops address host:port. [default: 127.0.0.1:6100]")] = None,
    provider: Annotated[str | None, typer.Option(help="local | kubernetes")] = None,
    policy_file: Annotated[Path | None, typer.Option("--policy", help="Policy YAML.")] = None,
    prices_file: Annotated[Path | None, typer.Option("--prices", help="Price list YAML.")] = None,
    ops_port: Annotated[int | None, typer.Option(help="Operations port. [default: 6300]")] = None,
    database_url: Annotated[str | None, typer.Option(
        "--database-url", "--store", help="Where samples and decisions go: "
        "sqlite:///path.db | postgresql://... | memory. [default: SQLite in the data dir; "
        "env INFERNO_DATABASE_URL]")] = None,
    config: ConfigOpt = None,
    log_level: LogOpt = "info",
) -> None:
    """Run the governator loop: read telemetry, decide, scale through the provider."""
    from inferno.governator.wiring import (
        build_governator,
        load_policy_and_prices,
        run_governator,
    )
    from inferno.wiring import configure_logging

    settings = _settings(GovernatorSettings, _cli(locals(), GovernatorSettings), config)
    configure_logging(log_level)
    try:
        policy, prices = load_policy_and_prices(settings)
        gov = build_governator(settings, policy, prices, config=config)
    except ConfigError as exc:
        typer.secho(f"error: {exc.message}", err=True, fg="red")
        raise typer.Exit(2) from exc
    run_governator(gov, settings.host, settings.ops_port)


@governator_app.command("status")
def governator_status(
    host: Annotated[str, typer.Option(help="Governator host.")] = "127.0.0.1",
    ops_port: Annotated[int, typer.Option(help="Governator ops port.")] = 6300,
    as_json: Annotated[bool, typer.Option("--json", help="Raw JSON instead of tables.")] = False,
) -> None:
    """The fleet, current signals, targets and the last decisions."""
    from inferno.governator.render import fetch_state, print_state

    state = fetch_state(host, ops_port)
    if state is None:
        typer.secho(f"error: no governator answers at http://{host}:{ops_port}/governator/state",
                    err=True, fg="red")
        raise typer.Exit(1)
    if as_json:
        import json

        typer.echo(json.dumps(state, indent=2))
    else:
        print_state(state)


@governator_app.command("plan")
def governator_plan(
    prices: Annotated[Path, typer.Option(help="Price list YAML.")],
    trace: Annotated[Path | None, typer.Option(help="Request trace (CSV or JSONL).")] = None,
    synthetic: Annotated[str | None, typer.Option(
        help="A generated trace instead of --trace: steps, ramps, diurnal, heavy-tail, "
             "two-models.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the --synthetic trace.")] = 0,
    duration: Annotated[float, typer.Option(help="Length of the --synthetic trace, s.")] = 1800,
    policy: Annotated[Path | None, typer.Option(help="Policy YAML (targets, bounds).")] = None,
    max_nodes: Annotated[int, typer.Option(help="Largest static fleet tried.")] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per fleet row.")
                       ] = False,
) -> None:
    """Replay a trace against candidate fleets: SLO attainment, node-hours, cost."""
    from inferno.governator.planner import load_trace, run_plan
    from inferno.governator.synthetic import synthetic_trace

    try:
        if (trace is None) == (synthetic is None):
            raise ConfigError("give exactly one of --trace FILE or --synthetic SHAPE")
        rows = (load_trace(trace) if trace is not None
                else synthetic_trace(synthetic or "", seed, duration))
        run_plan(rows, prices, policy, max_nodes=max_nodes, as_json=as_json)
    except ConfigError as exc:
        typer.secho(f"error: {exc.message}", err=True, fg="red")
        raise typer.Exit(2) from exc


@app.command()
def version() -> None:
    """Print Inferno's version."""
    typer.echo(__version__)


def main() -> None:
    try:
        app()
    except ConfigError as exc:  # one a command did not print itself (keys, usage: the store)
        typer.secho(f"error: {exc.message}", err=True, fg="red")
        raise SystemExit(2) from exc
