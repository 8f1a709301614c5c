"""``inferno batch``: submit JSONL files, follow them, fetch results; schedules; workers.

Talks to a proxy's ``/v1/files`` and ``/v1/batches`` (OpenAI's Batch API). Uploads and
downloads stream from and to disk.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

batch_app = typer.Typer(no_args_is_help=True,
                        help="Batches: submit JSONL files, follow them, fetch the results.")
schedules_app = typer.Typer(no_args_is_help=True, help="Scheduled batches: list, pause, "
                            "resume, delete (create one with 'inferno batch schedule').")
batch_app.add_typer(schedules_app, name="schedules")

UrlOpt = Annotated[str, typer.Option("--url", envvar="INFERNO_URL", help="The proxy.")]
KeyOpt = Annotated[str | None, typer.Option("--key", envvar="INFERNO_API_KEY",
                                            help="An API key.")]
EndpointOpt = Annotated[str, typer.Option(
    "--endpoint", help="/v1/chat/completions, /v1/completions or /v1/embeddings.")]
WindowOpt = Annotated[str, typer.Option("--window", help="Completion window: 1h to 7d.")]
MetaOpt = Annotated[list[str] | None, typer.Option("--metadata", help="key=value (repeat).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the proxy's answer as JSON.")]
_DONE = ("completed", "failed", "expired", "cancelled")
_URL = "http://127.0.0.1:8080"


def _client(url: str, key: str | None) -> Any:
    import httpx2

    base = url.rstrip("/")
    base = base if base.endswith("/v1") else base + "/v1"
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx2.Client(base_url=base, headers=headers, timeout=httpx2.Timeout(600, connect=5))


def _ok(resp: Any) -> Any:
    if resp.status_code >= 400:
        try:
            message = resp.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = resp.text[:200]
        typer.secho(f"error: {resp.status_code} {message}", err=True, fg="red")
        raise typer.Exit(1)
    return resp.json()


def _call(url: str, key: str | None, method: str, path: str, **kw: Any) -> Any:
    import httpx2

    try:
        with _client(url, key) as c:
            return _ok(c.request(method, path, **kw))
    except httpx2.HTTPError as exc:
        typer.secho(f"error: cannot reach {url}: {exc}", err=True, fg="red")
        raise typer.Exit(1) from exc


def _upload(url: str, key: str | None, file: Path) -> str:
    with file.open("rb") as f:
        data = _call(url, key, "POST", "/files", data={"purpose": "batch"},
                     files={"file": (file.name, f, "application/jsonl")})
    return str(data["id"])


def _metadata(pairs: list[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    out = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep:
            raise typer.BadParameter(f"--metadata expects key=value, got {p!r}")
        out[k] = v
    return out


@batch_app.command("submit")
def submit(file: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
           endpoint: EndpointOpt, window: WindowOpt = "24h", metadata: MetaOpt = None,
           wait: Annotated[bool, typer.Option("--wait", help="Follow it to the end.")] = False,
           url: UrlOpt = _URL, key: KeyOpt = None) -> None:
    """Upload a JSONL file and create a batch from it."""
    file_id = _upload(url, key, file)
    batch = _call(url, key, "POST", "/batches", json={
        "input_file_id": file_id, "endpoint": endpoint, "completion_window": window,
        "metadata": _metadata(metadata)})
    typer.echo(batch["id"])
    if wait:
        _follow(url, key, batch["id"])


def _follow(url: str, key: str | None, batch_id: str) -> None:
    """A live progress bar (done / failed, rate, ETA) until the batch ends."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed:.0f}/{task.fields[lines]} done"),
               TextColumn("[red]{task.fields[failed]} failed"),
               TextColumn("{task.fields[rate]}/s"), TimeRemainingColumn())
    with Progress(*columns) as bar:
        task = bar.add_task("validating", total=None, failed=0, rate="0.0", lines="?")
        started, first = time.monotonic(), None
        while True:
            b = _call(url, key, "GET", f"/batches/{batch_id}")
            c = b["request_counts"]
            finished = c["completed"] + c["failed"]
            if first is None and b["status"] == "in_progress":
                first = (time.monotonic(), finished)
            rate = 0.0
            if first is not None and time.monotonic() > first[0]:
                rate = (finished - first[1]) / (time.monotonic() - first[0])
            bar.update(task, description=b["status"], total=c["total"] or None,
                       completed=finished, failed=c["failed"], rate=f"{rate:.1f}",
                       lines=c["total"] or "?")
            if b["status"] in _DONE:
                break
            time.sleep(0.5)
    took = time.monotonic() - started
    typer.echo(f"{batch_id}: {b['status']} in {took:.1f} s; output {b['output_file_id']}, "
               f"errors {b['error_file_id']}")
    if b["status"] != "completed":
        raise typer.Exit(1)


@batch_app.command("list")
def list_batches(limit: Annotated[int, typer.Option(help="At most this many.")] = 20,
                 as_json: JsonOpt = False, url: UrlOpt = _URL, key: KeyOpt = None) -> None:
    """The latest batches (a user key: its own)."""
    from rich.console import Console
    from rich.table import Column, Table

    data = _call(url, key, "GET", "/batches", params={"limit": limit})
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    table = Table("status", "endpoint", "done", "failed", "total", "created")
    table.columns.insert(0, Column("id", no_wrap=True))
    for b in data["data"]:
        c = b["request_counts"]
        table.add_row(b["id"], b["status"], b["endpoint"], str(c["completed"]),
                      str(c["failed"]), str(c["total"]),
                      time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b["created_at"])))
    Console().print(table)


@batch_app.command("get")
def get(batch_id: str, url: UrlOpt = _URL, key: KeyOpt = None) -> None:
    """One batch, as JSON."""
    typer.echo(json.dumps(_call(url, key, "GET", f"/batches/{batch_id}"), indent=2))


@batch_app.command("cancel")
def cancel(batch_id: str, url: UrlOpt = _URL, key: KeyOpt = None) -> None:
    """Cancel a batch: lines in flight finish, the rest end as batch_cancelled."""
    typer.echo(_call(url, key, "POST", f"/batches/{batch_id}/cancel")["status"])


@batch_app.command("download")
def download(batch_id: str,
             out_dir: Annotated[Path, typer.Option("--dir", help="Where to write.")] = Path("."),
             url: UrlOpt = _URL, key: KeyOpt = None) -> None:
    """Write the batch's output and error files (BATCH_output.jsonl, BATCH_errors.jsonl)."""
    b = _call(url, key, "GET", f"/batches/{batch_id}")
    with _client(url, key) as c:
        for kind, file_id in (("output", b["output_file_id"]), ("errors", b["error_file_id"])):
            if not file_id:
                continue
            target = out_dir / f"{batch_id}_{kind}.jsonl"
            with c.stream("GET", f"/files/{file_id}/content") as resp:
                if resp.status_code >= 400:
                    resp.read()
                    _ok(resp)
                with target.open("wb") as f:
                    for chunk in resp.iter_bytes():
                        f.write(chunk)
            typer.echo(str(target))


@batch_app.command("schedule")
def schedule(file: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
             cron: Annotated[str, typer.Option("--cron", help="e.g. '0 2 * * *'.")],
             endpoint: EndpointOpt, window: WindowOpt = "24h", metadata: MetaOpt = None,
             url: UrlOpt = _URL, key: KeyOpt = None) -> None:
    """Create a batch from FILE on a cron schedule."""
    file_id = _upload(url, key, file)
    s = _call(url, key, "POST", "/batches/schedules", json={
        "cron": cron, "input_file_id": file_id, "endpoint": endpoint,
        "completion_window": window, "metadata": _metadata(metadata)})
    typer.echo(f"{s['id']}: next run "
               f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(s['next_run_at']))}")


@schedules_app.command("list")
def schedules_list(as_json: JsonOpt = False, url: UrlOpt = _URL, key: KeyOpt = None) -> None:
    """Schedules, with their next and last run."""
    from rich.console import Console
    from rich.table import Column, Table

    data = _call(url, key, "GET", "/batches/schedules")
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    table = Table("cron", "endpoint", "paused", "next run", "last batch")
    table.columns.insert(0, Column("id", no_wrap=True))
    for s in data["data"]:
        table.add_row(s["id"], s["cron"], s["endpoint"], "yes" if s["paused"] else "",
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(s["next_run_at"])),
                      s["last_batch_id"] or "")
    Console().print(table)


@schedules_app.command("pause")
def schedules_pause(schedule_id: str, url: UrlOpt = _URL, key: KeyOpt = None) -> None:
    """Stop a schedule from creating batches (until resumed)."""
    _call(url, key, "POST", f"/batches/schedules/{schedule_id}/pause")
    typer.echo(f"{schedule_id}: paused")


@schedules_app.command("resume")
def schedules_resume(schedule_id: str, url: UrlOpt = _URL, key: KeyOpt = None) -> None:
    """Resume a paused schedule from its next run after now."""
    _call(url, key, "POST", f"/batches/schedules/{schedule_id}/resume")
    typer.echo(f"{schedule_id}: resumed")


@schedules_app.command("delete")
def schedules_delete(schedule_id: str, url: UrlOpt = _URL, key: KeyOpt = None) -> None:
    """Delete a schedule (batches it created stay)."""
    _call(url, key, "DELETE", f"/batches/schedules/{schedule_id}")
    typer.echo(f"{schedule_id}: deleted")
