"""``inferno models``: pull, list, show, rm, tag, verify, prune, import (the model store).

Kept apart from cli.py (which only mounts this group) so the CLI module stays readable.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from inferno.core.errors import ConfigError, InfernoError
from inferno.models.store import Manifest, ModelStore, parse_ref

if TYPE_CHECKING:
    from inferno.client import Client, NodeResult

T = TypeVar("T")

models_app = typer.Typer(
    no_args_is_help=True, help="The model store: pull, import, inspect and remove models."
)

DirOpt = Annotated[
    Path | None,
    typer.Option(
        "--models-dir",
        envvar="INFERNO_MODELS_DIR",
        help="Model store. [default: <data dir>/models]",
    ),
]


def _store(models_dir: Path | None) -> ModelStore:
    return ModelStore(models_dir)


def _fail(exc: InfernoError) -> typer.Exit:
    typer.secho(f"error: {exc.message}", err=True, fg="red")
    return typer.Exit(2 if isinstance(exc, ConfigError) else 1)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


@models_app.command("pull")
def models_pull(
    ref: Annotated[str, typer.Argument(help="Catalog id, https://... URL or file://... path.")],
    as_json: Annotated[bool, typer.Option("--json", help="JSON progress lines.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress.")] = False,
    models_dir: DirOpt = None,
) -> None:
    """Download a model into the store (resumes an interrupted pull, verifies digests)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from inferno.models.pull import pull

    store = _store(models_dir)
    console = Console(stderr=True)
    bar: Progress | None = None
    tasks: dict[str, Any] = {}
    last: dict[str, float] = {}

    def on_progress(filename: str, done: int, total: int | None) -> None:
        if as_json:
            now = time.monotonic()
            if done == total or now - last.get(filename, 0.0) >= 0.2:  # a line per 0.2 s
                last[filename] = now
                print(
                    json.dumps(
                        {"event": "progress", "file": filename, "done": done, "total": total}
                    ),
                    flush=True,
                )
        elif bar is not None:
            if filename not in tasks:
                tasks[filename] = bar.add_task(filename, total=total)
            bar.update(tasks[filename], completed=done, total=total)

    if not as_json and not quiet and console.is_terminal:
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
    try:
        if bar is not None:
            with bar:
                manifest = asyncio.run(pull(ref, store, progress=on_progress))
        else:
            manifest = asyncio.run(pull(ref, store, progress=on_progress))
    except InfernoError as exc:
        if as_json:
            print(json.dumps({"event": "error", "error": exc.message}), flush=True)
        raise _fail(exc) from exc
    if as_json:
        print(
            json.dumps(
                {
                    "event": "done",
                    "name": manifest.name,
                    "tag": manifest.tag,
                    "format": manifest.format,
                    "size": manifest.size,
                    "digests": [layer.digest for layer in manifest.layers],
                }
            ),
            flush=True,
        )
    elif not quiet:
        typer.echo(f"pulled {manifest.ref} ({_mb(manifest.size)}, {manifest.format})")


@models_app.command("list")
def models_list(models_dir: DirOpt = None) -> None:
    """Models in the store, and catalog models available without a pull."""
    from rich.console import Console
    from rich.table import Table

    from inferno.models.catalog import CATALOG, resolve_model

    table = Table("name", "tag", "digest", "size", "format", "source")
    manifests = _store(models_dir).list()
    for m in manifests:
        digest = m.layers[0].digest[:12] if m.layers else ""
        table.add_row(m.name, m.tag, digest, _mb(m.size), m.format, m.source)
    pulled = {m.name for m in manifests}
    for entry in CATALOG.values():
        if entry.id in pulled:
            continue
        try:
            path = resolve_model(entry.id).path
            table.add_row(entry.id, "", "", "", "", f"catalog: installed at {path}")
        except ConfigError:
            table.add_row(entry.id, "", "", "", "", f"catalog: missing: {entry.install}")
    Console(width=200).print(table)


@models_app.command("show")
def models_show(
    ref: Annotated[str, typer.Argument(help="NAME[:TAG]")],
    ctx: Annotated[int, typer.Option("--ctx", help="Context per sequence.")] = 4096,
    parallel: Annotated[int, typer.Option("--parallel", help="Sequences at once.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of text.")] = False,
    models_dir: DirOpt = None,
) -> None:
    """A model's layers and, for GGUF, its header and the memory it needs."""
    from dataclasses import asdict

    from inferno.models.gguf_info import read_gguf

    store = _store(models_dir)
    try:
        m = store.get_manifest(ref)
        out: dict[str, Any] = {
            "name": m.name,
            "tag": m.tag,
            "source": m.source,
            "format": m.format,
            "layers": [asdict(x) for x in m.layers],
        }
        if m.format == "gguf":
            info = read_gguf(store.weights_blob(m))
            kv = info.kv_bytes(ctx, parallel)
            out["gguf"] = asdict(info)
            out["memory"] = {
                "ctx": ctx,
                "parallel": parallel,
                "weights": info.weights_bytes,
                "kv_cache": kv,
                "total": info.weights_bytes + (kv or 0),
            }
    except InfernoError as exc:
        raise _fail(exc) from exc
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    typer.echo(f"{m.ref}  ({m.format}, from {m.source})")
    for layer in m.layers:
        typer.echo(f"  {layer.filename}  sha256:{layer.digest[:12]}  {_mb(layer.size)}")
    if "gguf" in out:
        g, mem = out["gguf"], out["memory"]
        typer.echo(f"  architecture    {g['architecture']}")
        typer.echo(f"  parameters      {g['parameters']:,}")
        typer.echo(f"  file type       {g['file_type']}")
        typer.echo(f"  context length  {g['context_length']}")
        typer.echo(f"  chat template   {'yes' if g['chat_template'] else 'no'}")
        kv_text = _mb(mem["kv_cache"]) if mem["kv_cache"] is not None else "unknown"
        typer.echo(
            f"  memory at --ctx {ctx} --parallel {parallel}: weights "
            f"{_mb(mem['weights'])} + KV cache {kv_text} = {_mb(mem['total'])}"
        )


def open_by_a_process(paths: set[Path]) -> bool:
    """True when a process (an engine) has one of ``paths`` open or memory-mapped. Linux
    /proc only; processes we may not inspect are skipped."""
    wanted = {str(p.resolve()) for p in paths}
    proc = Path("/proc")
    if not proc.is_dir():
        return False
    for pid in (p for p in proc.iterdir() if p.name.isdigit()):
        try:
            if any(os.readlink(fd) in wanted for fd in (pid / "fd").iterdir()):
                return True
            maps = (pid / "maps").read_text(errors="replace")
            if any(w in maps for w in wanted):
                return True
        except OSError:
            continue
    return False


@models_app.command("rm")
def models_rm(
    ref: Annotated[str, typer.Argument(help="NAME[:TAG]")],
    force: Annotated[bool, typer.Option("--force", help="Remove even while in use.")] = False,
    models_dir: DirOpt = None,
) -> None:
    """Remove a model's manifest (refused while a process uses it); `prune` frees blobs."""
    store = _store(models_dir)

    def in_use(m: Manifest) -> bool:
        return open_by_a_process({store.blob_path(x.digest) for x in m.layers})

    try:
        removed = store.remove(ref, force=force, in_use=in_use)
    except InfernoError as exc:
        raise _fail(exc) from exc
    typer.echo(f"removed {removed.ref}")


@models_app.command("tag")
def models_tag(
    src: Annotated[str, typer.Argument(help="NAME[:TAG]")],
    dst: Annotated[str, typer.Argument(help="NAME[:TAG]")],
    models_dir: DirOpt = None,
) -> None:
    """Give a model another name (the blobs are shared)."""
    try:
        copy = _store(models_dir).tag(src, dst)
    except InfernoError as exc:
        raise _fail(exc) from exc
    typer.echo(f"tagged {copy.ref}")


@models_app.command("verify")
def models_verify(models_dir: DirOpt = None) -> None:
    """Re-hash every blob; quarantine the ones that changed (exit 1 if any)."""
    problems = _store(models_dir).verify()
    for p in problems:
        what = f"has sha256:{p.actual}" if p.actual else "is missing"
        where = f", quarantined at {p.quarantined}" if p.quarantined else ""
        typer.secho(f"blob sha256:{p.digest} {what}{where}", err=True, fg="red")
    if problems:
        raise typer.Exit(1)
    typer.echo("all blobs verified")


@models_app.command("prune")
def models_prune(models_dir: DirOpt = None) -> None:
    """Delete blobs that no manifest names."""
    removed = _store(models_dir).prune()
    typer.echo(f"pruned {len(removed)} blob(s)")


@models_app.command("import")
def models_import(
    path: Annotated[Path | None, typer.Argument(help="A local model file.")] = None,
    ref: Annotated[str | None, typer.Argument(help="NAME[:TAG] for PATH.")] = None,
    source: Annotated[
        str | None,
        typer.Option("--from", help="Import every model of another tool's store: "
                     "'ollama' or 'hf-cache'."),
    ] = None,
    source_dir: Annotated[
        Path | None,
        typer.Option("--dir", help="That store's directory (default: where the tool keeps it)."),
    ] = None,
    models_dir: DirOpt = None,
) -> None:
    """Add local files to the store: hard links when possible, the originals unchanged.

    `inferno models import FILE NAME[:TAG]` imports one file; `inferno models import --from
    ollama` (or `--from hf-cache`) imports every model an Ollama store (or the Hugging Face
    cache) holds, under the names `ollama://` (or `hf://`) pulls would give them.
    """
    store = _store(models_dir)
    try:
        if source is None:
            if path is None or ref is None:
                raise ConfigError("give FILE and NAME[:TAG], or --from ollama|hf-cache")
            name, tag = parse_ref(ref)
            m = store.import_file(path, name, tag)
            typer.echo(f"imported {m.ref} ({_mb(m.size)}, {m.format})")
            return
        _import_store(store, source, source_dir)
    except InfernoError as exc:
        raise _fail(exc) from exc


def _import_store(store: ModelStore, source: str, root: Path | None) -> None:
    from inferno.models import importers

    if source == "ollama":
        found = importers.find_ollama(root or importers.ollama_root())
    elif source == "hf-cache":
        found = importers.find_hf_cache(root or importers.hf_cache_root())
    else:
        raise ConfigError(f"--from {source!r}: expected 'ollama' or 'hf-cache'")
    if not found:
        typer.echo("no models found")
        return
    failed = 0
    for item in found:
        try:
            # Hashing is the slow part (every byte is checked against the other store's digest).
            m = importers.import_found(
                store, item, lambda f: typer.echo(f"  hashing {f.filename}", err=True))
        except InfernoError as exc:
            failed += 1
            typer.echo(f"skipped {item.ref}: {exc}", err=True)
            continue
        typer.echo(f"imported {m.ref} ({_mb(m.size)}, {m.format})")
    if failed:
        raise typer.Exit(1)


# -- models loaded on nodes, through the proxy's admin API (load, unload, ps) -------------

UrlOpt = Annotated[
    str,
    typer.Option("--url", envvar="INFERNO_URL", help="The proxy's base URL."),
]
KeyOpt = Annotated[
    str | None,
    typer.Option("--key", envvar="INFERNO_API_KEY", help="An admin-scope API key."),
]


def _admin(url: str, key: str | None, call: Callable[[Client], T]) -> T:
    """One call through the admin SDK; exits with the proxy's error message on failure."""
    from inferno.client import Client

    try:
        with Client(url, api_key=key) as client:
            return call(client)
    except InfernoError as exc:
        typer.secho(f"error: {exc.message}", err=True, fg="red")
        raise typer.Exit(2 if isinstance(exc, ConfigError) else 1) from exc


def _print_results(results: list[NodeResult], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"data": [asdict(r) for r in results]}, indent=2))
        return
    failed = False
    for row in results:
        if row.ok:
            typer.echo(f"{row.node}: ok {json.dumps(row.result)}")
        else:
            failed = True
            err = row.error
            msg = err.get("message", err) if isinstance(err, dict) else err
            typer.secho(f"{row.node}: {row.status} {msg}", fg="red")
    if failed:
        raise typer.Exit(1)


@models_app.command("load")
def models_load(
    model: Annotated[str, typer.Argument(help="The model's served name.")],
    node: Annotated[str | None, typer.Option("--node", help="Only this node id.")] = None,
    keep_alive: Annotated[str | None, typer.Option(
        "--keep-alive", help="Idle time before unloading: 300, 5m, -1 (pinned), 0.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The proxy's answer as JSON.")] = False,
    url: UrlOpt = "http://127.0.0.1:8080",
    key: KeyOpt = None,
) -> None:
    """Load a model on the nodes that can serve it (through the proxy; admin key)."""
    results = _admin(url, key, lambda c: c.load_model(model, node=node, keep_alive=keep_alive))
    _print_results(results, as_json)


@models_app.command("unload")
def models_unload(
    model: Annotated[str, typer.Argument(help="The model's served name.")],
    node: Annotated[str | None, typer.Option("--node", help="Only this node id.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The proxy's answer as JSON.")] = False,
    url: UrlOpt = "http://127.0.0.1:8080",
    key: KeyOpt = None,
) -> None:
    """Unload a model from every node that has it loaded (through the proxy; admin key)."""
    _print_results(_admin(url, key, lambda c: c.unload_model(model, node=node)), as_json)


@models_app.command("deploy")
def models_deploy(
    model: Annotated[str, typer.Argument(help="The new version, e.g. NAME:NEW.")],
    replace: Annotated[str, typer.Option("--replace", help="The version it replaces.")],
    node: Annotated[str | None, typer.Option("--node", help="Only this node id.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The proxy's answer as JSON.")] = False,
    url: UrlOpt = "http://127.0.0.1:8080",
    key: KeyOpt = None,
) -> None:
    """Hot swap on every node serving --replace: load MODEL beside it, move its names to
    MODEL, unload it once its requests finish. Roll back by deploying the old one again."""
    results = _admin(url, key, lambda c: c.deploy_model(model, replace=replace, node=node))
    if as_json:
        _print_results(results, True)
        return
    for row in results:
        if row.ok and row.result is not None:
            new, old = row.result["model"], row.result["replaced"]
            names = ", ".join(new.get("aliases") or []) or "its own name"
            typer.echo(f"{row.node}: {new['name']} serves {names}; {old['name']} "
                       f"{old['status']}")
    _print_results([r for r in results if not r.ok], False)


@models_app.command("ps")
def models_ps(
    as_json: Annotated[bool, typer.Option("--json", help="The proxy's answer as JSON.")] = False,
    url: UrlOpt = "http://127.0.0.1:8080",
    key: KeyOpt = None,
) -> None:
    """The models loaded on every node: size, keep_alive, expiry, requests in flight."""
    from rich.console import Console
    from rich.table import Table

    rows = _admin(url, key, lambda c: c.loaded_models())
    if as_json:
        typer.echo(json.dumps({"object": "list", "data": rows}, indent=2))
        return
    now = time.time()
    table = Table("node", "model", "size", "keep alive", "expires", "in flight", "last used")
    for r in rows:
        expires = r.get("expires_at")
        last = r.get("last_used")
        table.add_row(
            r["node"], r["name"], _mb(int(r.get("size") or 0)),
            "forever" if r.get("pinned") else f"{r.get('keep_alive')}s",
            "-" if expires is None else f"in {max(0.0, expires - now):.0f}s",
            str(r.get("in_flight", 0)),
            "-" if last is None else f"{max(0.0, now - last):.0f}s ago",
        )
    Console().print(table)
