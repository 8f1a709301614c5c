"""Replay a request trace against a live proxy, open loop (each request at its time).

Used by the scale test and ``bench/governator_burst.py``. Requests stream, and the
backend answers only once the first token exists, so the time to response headers is
the time to first token - queue wait plus prefill, which for the small prompts of a
trace is queue wait to within tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import orjson

from inferno.core.errors import InfernoError
from inferno.governator.planner import TraceRow
from inferno.net import HttpClient


@dataclass(frozen=True, slots=True)
class Outcome:
    sent_at: float  # seconds since the replay started
    ttft_s: float | None  # None: failed
    total_s: float
    status: int


def bursty_trace(*, base_rps: float, burst_factor: float, before_s: float, burst_s: float,
                 after_s: float, model: str, prompt_tokens: int = 24,
                 completion_tokens: int = 24) -> list[TraceRow]:
    """Evenly spaced arrivals: ``base_rps``, then ``burst_factor`` times it, then base."""
    rows: list[TraceRow] = []
    t = 0.0
    for rps, span in ((base_rps, before_s), (base_rps * burst_factor, burst_s),
                      (base_rps, after_s)):
        end = t + span
        while t < end - 1e-9:
            rows.append(TraceRow(round(t, 3), model, prompt_tokens, completion_tokens))
            t += 1.0 / rps
        t = end
    return rows


async def _one(client: HttpClient, host: str, port: int, row: TraceRow, t0: float,
               limit_s: float) -> Outcome:
    body = orjson.dumps({
        "model": row.model, "stream": True, "max_tokens": row.completion_tokens,
        "temperature": 0, "messages": [{"role": "user", "content":
                                        "Count: " + " ".join(["one"] * max(1, row.prompt_tokens
                                                                           - 12))}]})
    start = time.monotonic()
    sent = start - t0
    try:
        resp = await client.request(host, port, "POST", "/v1/chat/completions", body=body,
                                    headers=[(b"content-type", b"application/json")],
                                    connect_timeout=5.0, header_timeout=limit_s)
        ttft = time.monotonic() - start
        async for _ in resp.iter_chunks(idle_timeout=limit_s):
            pass
    except InfernoError:
        return Outcome(sent, None, time.monotonic() - start, 0)
    ok = resp.status == 200
    return Outcome(sent, ttft if ok else None, time.monotonic() - start, resp.status)


async def replay(rows: list[TraceRow], host: str, port: int, *, limit_s: float = 120.0,
                 t0: float | None = None) -> list[Outcome]:
    """Send each row at its ``ts`` (relative to ``t0``, default now); wait for all."""
    client = HttpClient(max_idle_per_host=256)
    t0 = time.monotonic() if t0 is None else t0
    tasks = []
    try:
        for row in rows:
            delay = t0 + row.ts - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(client, host, port, row, t0, limit_s)))
        return list(await asyncio.gather(*tasks))
    finally:
        await client.aclose()
