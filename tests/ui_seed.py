"""A store seeded with what the dashboard shows: request-log rows, usage, governator
samples and decisions (shared by the dashboard's HTTP and browser tests, and bench/)."""

from __future__ import annotations

import time
from typing import Any

from inferno.proxy.accounting import new_request_id, new_row
from inferno.store import Store
from inferno.store.governator import sample_row


def log_rows(n: int, *, now: float | None = None, spacing: float = 1.0) -> list[dict[str, Any]]:
    now = time.time() if now is None else now
    rows = []
    for i in range(n):
        ts = now - i * spacing
        row = new_row(new_request_id(ts), ts, "/v1/chat/completions")
        row.update(key_id=f"key{i % 3}", model=("fake-model", "other-model")[i % 2],
                   node=f"node-{i % 2}", status=(200, 200, 200, 200, 502)[i % 5],
                   error_code="upstream_error" if i % 5 == 4 else None, attempts=1,
                   stream=bool(i % 2), prompt_tokens=10 + i % 7, completion_tokens=20 + i % 5,
                   latency_ms=100.0 + i % 50, ttft_ms=20.0 + i % 10, cost=0.0001 * (i % 4),
                   cache_hit=i % 10 == 0, request_body='{"model": "fake-model"}')
        rows.append(row)
    return rows


async def seed(store: Store, *, rows: int = 120) -> list[dict[str, Any]]:
    log = log_rows(rows)
    for i in range(0, len(log), 4096):
        await store.requests.insert_many(log[i:i + 4096])
    now = time.time()
    samples = [sample_row(now - 60 * (30 - i), "default",
                          {"ready": 1 + i // 10, "starting": int(i % 10 == 0),
                           "in_flight": i, "request_rate": 1.5 * i})
               for i in range(30)]
    decisions = [{"id": 1000 + i, "at": now - 60 * (30 - 10 * i), "pool": "default",
                  "current": 1 + i, "desired": 2 + i, "action": "up",
                  "reason": f"queue wait p95 over target ({i + 1}.0 s)", "node_type": "local",
                  "signals": {"queued": 3 + i}, "outcome": "ok"} for i in range(3)]
    await store.governator.write(samples=samples, decisions=decisions)
    return log


def batch_row(i: int, status: str, *, owner: str | None = None, now: float | None = None,
              **values: Any) -> dict[str, Any]:
    """An ``inferno_batches`` row, ``i`` seconds older than ``now``."""
    now = time.time() if now is None else now
    row: dict[str, Any] = {
        "id": f"batch_seed{i:04d}", "owner": owner, "endpoint": "/v1/chat/completions",
        "input_file_id": f"file-in{i}", "completion_window": "24h", "status": status,
        "metadata": None, "errors": None, "output_file_id": None, "error_file_id": None,
        "created_at": now - i, "expires_at": now - i + 86_400,
        "total": 10 + i % 7, "completed": 8 + i % 3, "failed": i % 2,
        "prompt_tokens": 0, "completion_tokens": 0}
    row.update(values)
    return row


async def seed_batches(store: Store, n: int = 60, *, owner: str | None = None
                       ) -> list[dict[str, Any]]:
    """``n`` finished batches (one in five failed with a validation error and an error
    file), newest first; the dashboard's batch pages read them back."""
    rows = []
    for i in range(n):
        failed = i % 5 == 3
        row = batch_row(i, "failed" if failed else "completed", owner=owner,
                        output_file_id=None if failed else f"file-out{i}",
                        error_file_id=f"file-err{i}" if failed else None,
                        errors={"object": "list", "data": [
                            {"code": "invalid_json", "message": "line is not JSON",
                             "line": 3}]} if failed else None)
        await store.batches.create(row)
        rows.append(row)
    return rows
