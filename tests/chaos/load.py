"""An open-loop load generator: requests start on a fixed schedule, whatever the answers.

Closed-loop clients slow down when the system does and so hide its failures
(coordinated omission); here request i starts at ``i / rate`` seconds no matter what.
Every outcome is classified, including how a stream ended.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from inferno.core.errors import InfernoError
from inferno.net import HttpClient, SSEDecoder


@dataclass
class Outcome:
    index: int
    stream: bool
    started: float
    status: int = 0
    ended: float = 0.0
    first_byte: float = 0.0
    # ok | http_error | stream_error | truncated | exception
    kind: str = "exception"
    error_valid: bool = True  # every error body/event is a valid OpenAI error JSON
    events: int = 0
    backend: str | None = None
    attempts: int = 0
    retry_after: str | None = None
    detail: str = ""

    @property
    def latency(self) -> float:
        return self.ended - self.started


@dataclass
class LoadReport:
    outcomes: list[Outcome] = field(default_factory=list)
    behind: float = 0.0  # worst lateness of the generator against its schedule

    def count(self, kind: str, stream: bool | None = None) -> int:
        return sum(
            1 for o in self.outcomes if o.kind == kind and (stream is None or o.stream == stream)
        )

    def errors(self, stream: bool | None = None) -> list[Outcome]:
        return [
            o for o in self.outcomes if o.kind != "ok" and (stream is None or o.stream == stream)
        ]


def _valid_error(payload: bytes) -> bool:
    try:
        err = json.loads(payload)["error"]
        return (
            isinstance(err["message"], str)
            and isinstance(err["type"], str)
            and "code" in err
            and "param" in err
        )
    except (ValueError, KeyError, TypeError):
        return False


async def one_request(
    client: HttpClient,
    port: int,
    index: int,
    stream: bool,
    model: str = "fake-model",
    max_tokens: int = 8,
    deadline_s: float = 30.0,
    on_first_event: Callable[[Outcome], Awaitable[None]] | None = None,
) -> Outcome:
    """One chat completion through the proxy, classified. ``on_first_event`` runs once a
    stream has delivered its first event (a chaos test cuts that stream's node there)."""
    out = Outcome(index, stream, time.monotonic())
    body = json.dumps(
        {
            "model": model,
            "stream": stream,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": f"hello {index}"}],
        }
    ).encode()
    try:
        resp = await client.request(
            "127.0.0.1",
            port,
            "POST",
            "/v1/chat/completions",
            headers=[(b"content-type", b"application/json")],
            body=body,
            connect_timeout=5,
            header_timeout=deadline_s,
        )
        out.status = resp.status
        out.backend = resp.header("x-inferno-backend")
        out.attempts = int(resp.header("x-inferno-attempts") or 0)
        out.retry_after = resp.header("retry-after")
        if resp.status != 200 or not stream:
            payload = await resp.read()
            out.first_byte = time.monotonic()
            if resp.status == 200:
                out.kind = "ok"
            else:
                out.kind = "http_error"
                out.error_valid = _valid_error(payload)
                out.detail = payload[:200].decode(errors="replace")
            resp.close()
            return out
        decoder = SSEDecoder()
        done = False
        async for chunk in resp.iter_chunks(idle_timeout=deadline_s):
            if not out.first_byte:
                out.first_byte = time.monotonic()
            for data in decoder.feed(chunk):
                if data == b"[DONE]":
                    done = True
                elif data.startswith(b'{"error"'):
                    out.kind = "stream_error"
                    out.error_valid = _valid_error(data)
                    out.detail = data[:200].decode(errors="replace")
                else:
                    out.events += 1
                    if on_first_event is not None and out.events == 1:
                        await on_first_event(out)
        resp.close()
        if out.kind != "stream_error":
            out.kind = "ok" if done else "truncated"
    except InfernoError as exc:
        out.kind = "exception"
        out.detail = f"{type(exc).__name__}: {exc.message}"
    finally:
        out.ended = time.monotonic()
    return out


async def open_loop(
    port: int,
    *,
    rate: float,
    duration: float,
    stream_fraction: float = 0.0,
    model: str = "fake-model",
    max_tokens: int = 8,
    deadline_s: float = 30.0,
) -> LoadReport:
    """``rate`` requests/s for ``duration`` s; a ``stream_fraction`` of them streamed
    (spread evenly, deterministic)."""
    client = HttpClient(max_idle_per_host=512)
    report = LoadReport()
    tasks: list[asyncio.Task[Outcome]] = []
    start = time.monotonic()
    total = int(rate * duration)
    acc = 0.0
    try:
        for i in range(total):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                report.behind = max(report.behind, -delay)
            acc += stream_fraction
            stream = acc >= 1.0
            if stream:
                acc -= 1.0
            tasks.append(
                asyncio.create_task(
                    one_request(client, port, i, stream, model, max_tokens, deadline_s)
                )
            )
        report.outcomes = list(await asyncio.gather(*tasks))
    finally:
        await client.aclose()
    return report
