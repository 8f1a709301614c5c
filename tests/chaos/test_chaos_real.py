"""Chaos test 1 against real llama.cpp nodes (SmolLM2): SIGKILL under load, no lost
non-streaming request, cut streams end with an error event."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from tests.chaos.load import open_loop
from tests.chaos.test_chaos import start_gateway, summary
from tests.integration.procs import backend, node_ids, wait_until

pytest.importorskip("llama_cpp", reason="the llama.cpp engine is not installed")
pytestmark = pytest.mark.integration


async def test_kill_real_llama_node_under_load(tmp_path: Path) -> None:
    gw = await start_gateway(response_timeout=30.0, request_timeout=60.0)
    procs = [backend(tmp_path, f"r{i}", gw.ops.port, "--heartbeat-interval", "0.3",
                     "--lease-seconds", "2", "--parallel", "4").start() for i in range(3)]
    try:
        await asyncio.to_thread(wait_until, lambda: node_ids(gw.ops.port) >= {"r0", "r1", "r2"},
                                60, "3 real nodes", *procs)
        kills: list[float] = []

        async def killer() -> None:
            await asyncio.sleep(3.0)
            procs[1].signal(signal.SIGKILL)
            kills.append(time.monotonic())
            await asyncio.to_thread(procs[1].wait, 10)
            await asyncio.sleep(1.5)
            procs[1].start()

        chaos = asyncio.create_task(killer())
        report = await open_loop(gw.server.port, rate=4, duration=8, stream_fraction=0.3,
                                 model="smollm2-135m", max_tokens=8, deadline_s=60)
        await chaos
        cut = [o for o in report.outcomes if o.kind == "stream_error"]
        summary("kill-real", report, cut_streams=len(cut),
                attempts_per_request=round(sum(o.attempts for o in report.outcomes)
                                           / len(report.outcomes), 3))
        assert report.errors(stream=False) == [], [o.detail for o in report.errors()]
        assert all(o.kind in ("ok", "stream_error") for o in report.outcomes)
        assert all(o.error_valid for o in report.outcomes)
        assert all(min(o.ended - k for k in kills if k <= o.ended) <= 1.0 for o in cut)
    finally:
        for p in procs:
            p.stop()
        await gw.drain()
