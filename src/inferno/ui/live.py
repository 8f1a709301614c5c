"""``GET /ui/live``: the dashboard's live updates over Server-Sent Events.

One event a second (``interval``): the last minute's figures, the newest ten-second point,
every node, and the timeline events the page has not seen yet (ids above ``after``, or
the ``Last-Event-ID`` a reconnecting browser sends). Nothing is computed per client
beyond reading the source; a closed page ends the stream. The Batches page asks for
``view=batches&ids=...`` instead: the progress of the open batches it shows, until none
of them is open any more.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from urllib.parse import parse_qs

import orjson

from inferno.api.dashboard import DataSource
from inferno.net import Request, StreamingResponse

_BATCH_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MAX_BATCHES = 50
_OPEN = ("validating", "in_progress", "finalizing", "cancelling")


def live(source: DataSource, req: Request, interval: float) -> StreamingResponse:
    q = parse_qs(req.query or "")
    raw = req.header("last-event-id") or (q.get("after") or ["0"])[-1]
    after = int(raw) if raw.isdigit() else 0
    return StreamingResponse(_stream(source, after, interval),
                             headers=[("cache-control", "no-store"),
                                      ("x-accel-buffering", "no")])


async def _stream(source: DataSource, after: int, interval: float) -> AsyncIterator[bytes]:
    yield b"retry: 2000\n\n"
    while source.serving:
        events = source.events(after, 100)
        if events:
            after = events[-1]["id"]
        series = source.series(10)
        body = orjson.dumps({"summary": source.summary(60), "point": series[-1],
                             "nodes": source.nodes(), "events": events})
        yield b"id: %d\nevent: snapshot\ndata: %s\n\n" % (after, body)
        await asyncio.sleep(interval)


def live_batches(source: DataSource, ids: str, interval: float) -> StreamingResponse:
    wanted = [b for b in ids.split(",") if _BATCH_ID.fullmatch(b)][:_MAX_BATCHES]
    return StreamingResponse(_batches(source, wanted, interval),
                             headers=[("cache-control", "no-store"),
                                      ("x-accel-buffering", "no")])


async def _batches(source: DataSource, ids: list[str],
                   interval: float) -> AsyncIterator[bytes]:
    yield b"retry: 2000\n\n"
    while source.serving and ids:
        rows = await source.batch_progress(ids)
        yield b"event: batches\ndata: %s\n\n" % orjson.dumps(rows)
        # A batch that has ended changes no more: stop asking about it.
        ids = [r["id"] for r in rows if r["status"] in _OPEN]
        if ids:
            await asyncio.sleep(interval)
