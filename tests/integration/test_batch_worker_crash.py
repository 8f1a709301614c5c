"""A batch survives SIGKILL of an ``inferno batch worker`` process: a proxy that runs no
items itself, two worker processes sharing its PostgreSQL store, one of them killed
several times while items run and started again. The batch completes with every custom_id
exactly once across the output and error files. The fake node runs in this test."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.batch_support import completion, jsonl, parse_lines
from tests.conftest import free_port, require_postgres, start_fake_node
from tests.integration.procs import Proc, inferno
from tests.integration.test_batch_crash import _counts, _up
from tests.polling import eventually

pytestmark = pytest.mark.integration
LINES = 1500
KILLS = 4


def _worker(tmp: Path, n: int, proxy_port: int) -> Proc:
    return Proc(f"worker{n}", inferno("batch", "worker", "--proxy-url",
                                      f"http://127.0.0.1:{proxy_port}", "--workers", "8",
                                      "--log-level", "warning"),
                tmp / f"worker{n}.log")


def _kill(proc: Proc) -> None:
    assert proc.popen is not None
    os.killpg(proc.popen.pid, signal.SIGKILL)
    proc.popen.wait(10)


async def test_batch_completes_exactly_once_across_worker_kills(tmp_path: Path) -> None:
    url, schema = require_postgres(), f"t_{uuid.uuid4().hex[:12]}"
    common = {"INFERNO_DATABASE_URL": url, "INFERNO_BATCH_POLL_INTERVAL": "0.05",
              "INFERNO_BATCH_LEASE": "1", "INFERNO_BATCH_MAX_ATTEMPTS": "50",
              "INFERNO_BATCH_RETRY_BASE": "0.05", "INFERNO_BATCH_RETRY_MAX": "0.2"}
    proxy_env = {**common, "INFERNO_PROXY_DATA_DIR": str(tmp_path),
                 "INFERNO_PROXY_DATABASE_SCHEMA": schema, "INFERNO_BATCH_WORKERS": "0",
                 "INFERNO_PROXY_DEFAULT_LEASE": "2"}
    worker_env = {**common, "INFERNO_BATCH_DATABASE_SCHEMA": schema,
                  "INFERNO_BATCH_DATA_DIR": str(tmp_path / "worker")}
    port, ops = free_port(), free_port()
    # Each item takes a few tens of ms on the node, so a kill finds items in flight.
    node = await start_fake_node(parallel=16, token_delay=0.01, discovery_lb=f"127.0.0.1:{ops}")
    proxy = Proc("proxy", inferno("proxy", "--port", str(port), "--ops-port", str(ops),
                                  "--log-level", "warning"),
                 tmp_path / "proxy.log", port, ops).start(proxy_env)
    workers: list[Proc] = []
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1", timeout=30)

    def tails() -> str:
        return "\n".join(f"--- {p.name}\n{p.tail()}" for p in (proxy, *workers))
    try:
        await _up(http, proxy)
        data = jsonl([completion(f"id-{i}", f"line {i}") for i in range(LINES)])
        r = await http.post("/files", data={"purpose": "batch"},
                            files={"file": ("in.jsonl", data, "application/jsonl")})
        assert r.status_code == 200, r.text
        r = await http.post("/batches", json={"input_file_id": r.json()["id"],
                                              "endpoint": "/v1/completions",
                                              "completion_window": "24h"})
        batch_id = r.json()["id"]

        async def running() -> bool:
            return (await _counts(http, batch_id))["status"] == "in_progress"
        await eventually(running, timeout=30, interval=0.05, what="validation")
        await asyncio.sleep(0.5)
        # No worker yet: the proxy itself runs nothing.
        assert (await _counts(http, batch_id))["request_counts"]["completed"] == 0, tails()
        workers = [_worker(tmp_path, n, port).start(worker_env) for n in range(2)]

        rng = random.Random(11)
        progress_at_kills: list[int] = []
        last = 0
        deadline = time.monotonic() + 45
        for k in range(KILLS):
            # Kill worker 0 once items have completed since the last kill (the restarted
            # process, or the other, is working), at a random moment after that.
            async def moved(after: int = last) -> int | None:
                done = int((await _counts(http, batch_id))["request_counts"]["completed"])
                return done if done > after else None
            await eventually(moved, timeout=30, interval=0.05, what="progress")
            await asyncio.sleep(rng.uniform(0.1, 0.6))
            status: dict[str, Any] = await _counts(http, batch_id)
            _kill(workers[0])
            last = int(status["request_counts"]["completed"])
            progress_at_kills.append(last)
            assert status["status"] == "in_progress", (k, status, progress_at_kills, tails())
            workers[0] = _worker(tmp_path, 0, port).start(worker_env)
            assert time.monotonic() < deadline, ("the kill loop took too long",
                                                 progress_at_kills, tails())
        # Every kill came while the batch was part-way: items were running.
        assert all(0 < n < LINES for n in progress_at_kills), progress_at_kills

        async def ended() -> dict[str, Any] | None:
            b = await _counts(http, batch_id)
            return b if b["status"] in ("completed", "failed", "expired", "cancelled") else None
        final = await eventually(ended, timeout=60, interval=0.2, what="the batch to end")
        assert final["status"] == "completed", (final, tails())
        ids: Counter[str] = Counter()
        for key in ("output_file_id", "error_file_id"):
            if final[key]:
                content = await http.get(f"/files/{final[key]}/content")
                ids.update(o["custom_id"] for o in parse_lines(content.content))
        assert set(ids) == {f"id-{i}" for i in range(LINES)}, (LINES - len(ids), tails())
        assert set(ids.values()) == {1}, [k for k, n in ids.items() if n > 1][:5]
        assert final["request_counts"] == {"total": LINES, "completed": LINES, "failed": 0}, (
            final, progress_at_kills)
    finally:
        await http.aclose()
        for p in workers:
            p.stop()
        proxy.stop()
        await node.drain()
        from inferno.store import Store

        store = Store(url, schema=schema)
        await store.drop_schema()
        await store.close()
