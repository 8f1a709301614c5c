"""A batch survives SIGKILL of the proxy: killed several times mid-batch (SQLite, then
PostgreSQL), it completes on restart with every custom_id exactly once across the output
and error files. The proxy runs as a real process; the fake node runs in this test."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx2 as httpx
import orjson
import pytest

from tests.batch_support import completion, jsonl, parse_lines
from tests.conftest import free_port, require_postgres, start_fake_node
from tests.integration.procs import Proc, inferno
from tests.polling import eventually

pytestmark = pytest.mark.integration
LINES = 2000
KILLS = 5


def _proxy(tmp: Path, port: int, ops: int) -> Proc:
    return Proc("proxy", inferno("proxy", "--port", str(port), "--ops-port", str(ops),
                                 "--ops-health", "loop", "--log-level", "warning"),
                tmp / "proxy.log", port, ops)


async def _up(http: httpx.AsyncClient, proc: Proc) -> None:
    async def ready() -> bool:
        try:
            r = await http.get("/models")
        except httpx.HTTPError:
            return False
        return r.status_code == 200 and any(m["id"] == "fake-model" for m in r.json()["data"])
    try:
        await eventually(ready, timeout=60, interval=0.05, what="the proxy to serve the node")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{proc.tail()}") from None


async def _counts(http: httpx.AsyncClient, batch_id: str) -> dict[str, object]:
    r = await http.get(f"/batches/{batch_id}")
    r.raise_for_status()
    return r.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
async def test_batch_completes_exactly_once_across_proxy_kills(tmp_path: Path, db: str) -> None:
    env = {"INFERNO_PROXY_DATA_DIR": str(tmp_path), "INFERNO_BATCH_POLL_INTERVAL": "0.05",
           "INFERNO_BATCH_LEASE": "1", "INFERNO_BATCH_MAX_ATTEMPTS": "50",
           "INFERNO_BATCH_RETRY_BASE": "0.05", "INFERNO_BATCH_RETRY_MAX": "0.2",
           "INFERNO_BATCH_WORKERS": "16", "INFERNO_PROXY_DEFAULT_LEASE": "2"}
    schema = None
    if db == "postgresql":
        schema = f"t_{uuid.uuid4().hex[:12]}"
        env.update(INFERNO_DATABASE_URL=require_postgres(), INFERNO_PROXY_DATABASE_SCHEMA=schema)
    port, ops = free_port(), free_port()
    node = await start_fake_node(parallel=16, discovery_lb=f"127.0.0.1:{ops}")
    proc = _proxy(tmp_path, port, ops).start(env)
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1", timeout=30)
    try:
        await _up(http, proc)
        data = jsonl([completion(f"id-{i}", f"line {i}") for i in range(LINES)])
        r = await http.post("/files", data={"purpose": "batch"},
                            files={"file": ("in.jsonl", data, "application/jsonl")})
        assert r.status_code == 200, r.text
        r = await http.post("/batches", json={"input_file_id": r.json()["id"],
                                              "endpoint": "/v1/completions",
                                              "completion_window": "24h"})
        batch_id = r.json()["id"]
        rng = random.Random(7)
        progress_at_kills = []
        deadline = time.monotonic() + 120
        for _ in range(KILLS):
            # Kill at a random moment, validation included, before the batch ends.
            wait = rng.uniform(0.2, 1.2)
            t_end = time.monotonic() + wait
            status: dict[str, object] = {}
            while time.monotonic() < t_end:
                status = await _counts(http, batch_id)
                if status["status"] != "validating" and status["request_counts"][  # type: ignore[index]
                        "completed"] > LINES * 0.9:
                    break
                await asyncio.sleep(0.05)
            assert proc.popen is not None
            os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait(10)
            progress_at_kills.append(status.get("request_counts"))
            proc = _proxy(tmp_path, port, ops).start(env)
            await _up(http, proc)
            assert time.monotonic() < deadline, ("the kill loop took too long",
                                                 progress_at_kills, proc.tail())

        async def ended() -> dict[str, object] | None:
            b = await _counts(http, batch_id)
            return b if b["status"] in ("completed", "failed", "expired", "cancelled") else None
        final = await eventually(ended, timeout=90, interval=0.2, what="the batch to end")
        assert final["status"] == "completed", (final, proc.tail())
        # The kills happened while the batch ran (not all before it started or after it ended).
        assert any(c and 0 < c["completed"] < LINES for c in progress_at_kills), progress_at_kills  # type: ignore[index]
        ids: Counter[str] = Counter()
        for key in ("output_file_id", "error_file_id"):
            if final[key]:
                content = await http.get(f"/files/{final[key]}/content")
                ids.update(o["custom_id"] for o in parse_lines(content.content))
        assert len(ids) == LINES and set(ids.values()) == {1}, (
            [k for k, n in ids.items() if n > 1][:5], LINES - len(ids))
        assert final["request_counts"] == {"total": LINES, "completed": LINES, "failed": 0}, (
            final, progress_at_kills, proc.tail())
        out = parse_lines((await http.get(f"/files/{final['output_file_id']}/content")).content)
        assert all(o["response"]["status_code"] == 200 for o in out)
        assert orjson.dumps(sorted(ids)) == orjson.dumps(sorted(f"id-{i}" for i in range(LINES)))
    finally:
        await http.aclose()
        proc.stop()
        await node.drain()
        if schema is not None:
            from inferno.store import Store

            store = Store(require_postgres(), schema=schema)
            await store.drop_schema()
            await store.close()
