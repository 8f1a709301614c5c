"""Chaos test 1 against real llama.cpp nodes (SmolLM2): SIGKILL under load, no lost
non-streaming request, cut streams end with an error event."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from inferno.net import HttpClient
from tests.chaos.load import Outcome, one_request, open_loop
from tests.chaos.test_chaos import start_gateway, stream_cutter, summary
from tests.integration.procs import Proc, backend, node_ids, wait_until

pytest.importorskip("llama_cpp", reason="the llama.cpp engine is not installed")
pytestmark = pytest.mark.integration


async def test_kill_real_llama_node_under_load(tmp_path: Path) -> None:
    gw = await start_gateway(response_timeout=30.0, request_timeout=60.0)
    procs = [
        backend(
            tmp_path,
            f"r{i}",
            gw.ops.port,
            "--heartbeat-interval",
            "0.3",
            "--lease-seconds",
            "2",
            "--parallel",
            "4",
        ).start()
        for i in range(3)
    ]
    try:
        await asyncio.to_thread(
            wait_until,
            lambda: node_ids(gw.ops.port) >= {"r0", "r1", "r2"},
            60,
            "3 real nodes",
            *procs,
        )
        kills: list[tuple[str, float]] = []
        probe: list[Outcome] = []

        async def killer() -> None:
            # Kill the node serving a long probe stream once it has begun: the kill
            # certainly cuts that stream (the load's own streams are short and few).
            await asyncio.sleep(3.0)  # the scenario: 3 s of load first
            killed: list[Proc] = []
            client = HttpClient()
            try:
                probe.append(
                    await one_request(
                        client,
                        gw.server.port,
                        -1,
                        True,
                        model="smollm2-135m",
                        max_tokens=256,
                        deadline_s=60,
                        on_first_event=stream_cutter(procs, kills, killed),
                    )
                )
            finally:
                await client.aclose()
            for victim in killed:
                await asyncio.to_thread(victim.wait, 10)
                await asyncio.sleep(1.5)  # the scenario: the node stays down 1.5 s
                victim.start()

        chaos = asyncio.create_task(killer())
        report = await open_loop(
            gw.server.port,
            rate=4,
            duration=8,
            stream_fraction=0.3,
            model="smollm2-135m",
            max_tokens=8,
            deadline_s=60,
        )
        await chaos
        cut = [o for o in [*report.outcomes, *probe] if o.kind == "stream_error"]
        summary(
            "kill-real",
            report,
            cut_streams=len(cut),
            attempts_per_request=round(
                sum(o.attempts for o in report.outcomes) / len(report.outcomes), 3
            ),
        )
        # What the scenario claims happened: one kill, cutting the probe stream mid-way.
        assert len(kills) == 1 and len(probe) == 1
        assert probe[0].kind == "stream_error" and probe[0].events >= 1, probe[0].detail
        assert {o.backend for o in cut} == {kills[0][0]}
        # How the cut and the rest of the load were handled.
        assert report.errors(stream=False) == [], [o.detail for o in report.errors()]
        assert all(o.kind in ("ok", "stream_error") for o in report.outcomes)
        assert all(o.error_valid for o in [*report.outcomes, *probe])
        kill_at = kills[0][1]
        assert all(kill_at <= o.ended <= kill_at + 1.0 for o in cut), [
            o.ended - kill_at for o in cut
        ]
    finally:
        for p in procs:
            p.stop()
        await gw.drain()
