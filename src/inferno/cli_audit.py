"""``inferno audit``: read and verify the audit trail in the proxy's configured store."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from inferno.core.config import ProxySettings
from inferno.core.errors import ConfigError, InfernoError
from inferno.core.settings import load_settings, parse_duration

audit_app = typer.Typer(
    invoke_without_command=True,
    help="Who changed what: the append-only, hash-chained audit trail.")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file.")]


def _run(config: Path | None, job: Any) -> Any:
    from inferno.proxy.security import manage

    try:
        return manage.run(load_settings(ProxySettings, cli={}, config_file=config), job)
    except InfernoError as exc:
        typer.secho(f"error: {exc.message}", err=True, fg="red")
        raise typer.Exit(2 if isinstance(exc, ConfigError) else 1) from exc


@audit_app.callback()
def audit_list(
    ctx: typer.Context,
    actor: Annotated[str | None, typer.Option(help="Only this actor (key id, cli:USER, "
                                                   "system, local).")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action, or a family: "
                                                    "'key' matches key.create, key.revoke.")]
    = None,
    target: Annotated[str | None, typer.Option(help="Only this target.")] = None,
    since: Annotated[str | None, typer.Option(help="Only this recent: 30m, 2h, 7d.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    config: ConfigOpt = None,
) -> None:
    """The newest entries of the audit trail (filters narrow it)."""
    if ctx.invoked_subcommand is not None:
        return
    after: float | None = None
    if since is not None:
        try:
            after = time.time() - parse_duration(since)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--since") from exc
    rows: list[dict[str, Any]] = _run(config, lambda s: s.audit.find(
        actor=actor, action=action, target=target, since=after, limit=limit))
    if as_json:
        for r in rows:
            typer.echo(json.dumps(r, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("seq", "time", "actor", "action", "target", "outcome", "request id")
    for r in rows:
        table.add_row(str(r["seq"]), time.strftime("%Y-%m-%d %H:%M:%S",
                                                   time.localtime(r["ts"])),
                      r["actor"], r["action"], r["target"], r["outcome"], r["request_id"] or "")
    Console().print(table)


@audit_app.command("verify")
def audit_verify(config: ConfigOpt = None) -> None:
    """Recompute the hash chain; exit 1 naming every row that was edited, inserted or
    removed. Keep the printed head hash elsewhere to anchor the chain."""
    checked, head, broken = _run(config, lambda s: s.audit.verify())
    for b in broken:
        typer.secho(f"row {b.seq}: {b.reason}", fg="red")
    if broken:
        raise typer.Exit(1)
    typer.echo(f"ok: {checked} rows, head {head}")
