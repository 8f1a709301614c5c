"""Hot swap: ``deploy NAME:NEW --replace NAME:OLD`` under streaming load, and rollback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

import httpx2 as httpx

from inferno.backend.engines.base import Chunk, SamplingParams
from inferno.backend.node import BackendNode
from inferno.core.config import BackendSettings
from inferno.proxy.gateway import Gateway
from tests.polling import eventually
from tests.unit.test_multi_model import SlowLoadFake, chat


class Recorded(SlowLoadFake):
    """Records (model, started, ended) for every generation, to show which version served."""

    runs: list[tuple[str, float, float]]

    async def generate(self, prompt: str, params: SamplingParams) -> AsyncGenerator[Chunk, None]:
        started = time.monotonic()
        try:
            async for chunk in super().generate(prompt, params):
                yield chunk
        finally:
            self.runs.append((self.info.id, started, time.monotonic()))


async def start_versioned_node(gateway: Gateway, runs: list[tuple[str, float, float]],
                               loads: list[str]) -> BackendNode:
    def build(ref: str) -> Recorded:
        # As the store serves NAME:TAG: under its ref, and under NAME while it is current.
        engine = Recorded(model_id=ref, aliases=(ref.split(":")[0],), n_ctx=256, parallel=8,
                          token_delay=0.02)
        engine.loads, engine.runs = loads, runs
        return engine

    s = BackendSettings(port=0, ops_port=0, engine="fake", model=["m:v1"],
                        heartbeat_interval=0.2, drain_timeout=5.0, node_id="swap-1",
                        discovery_lb=f"127.0.0.1:{gateway.ops.port}")
    node = BackendNode(s, build_engine=build, sweep_interval=0.05)
    await node.start()
    return node


async def test_deploy_under_streaming_load_fails_nothing_and_rolls_back(
    gateway: Gateway,
) -> None:
    runs: list[tuple[str, float, float]] = []
    loads: list[str] = []
    node = await start_versioned_node(gateway, runs, loads)
    base = f"http://127.0.0.1:{gateway.server.port}"
    outcomes: list[tuple[int, bool]] = []  # (status, the stream reached [DONE])
    stop = asyncio.Event()

    async def one(http: httpx.AsyncClient, max_tokens: int) -> None:
        body = chat("m", stream=True, max_tokens=max_tokens)
        async with http.stream("POST", f"{base}/v1/chat/completions", json=body) as r:
            text = "".join([part async for part in r.aiter_text()])
        outcomes.append((r.status_code, text.rstrip().endswith("data: [DONE]")))

    async def client(http: httpx.AsyncClient) -> None:
        deadline = time.monotonic() + 30  # bounded whatever happens
        while not stop.is_set() and time.monotonic() < deadline:
            await one(http, 5)

    async with httpx.AsyncClient(timeout=20) as http:
        try:
            await eventually(lambda: "m" in gateway.pool.snapshot.models, what="m registered")
            clients = [asyncio.create_task(client(http)) for _ in range(4)]
            await eventually(lambda: len(outcomes) >= 8, what="load before the swap")
            # One long stream (60 tokens, ~1.2 s) is surely in flight on v1 during the swap.
            v1 = node.models.find("m:v1", refs=True)
            busy = v1.in_flight
            long_stream = asyncio.create_task(one(http, 60))
            await eventually(lambda: v1.in_flight > busy, what="the long stream on v1")

            r = await http.post(f"{base}/v1/models/deploy",
                                json={"model": "m:v2", "replace": "m:v1"})
            assert r.status_code == 200, r.text
            [result] = r.json()["data"]
            assert result["result"]["model"]["aliases"] == ["m"]
            assert result["result"]["replaced"]["status"] == "unloaded"
            after = len(outcomes)
            await eventually(lambda: len(outcomes) >= after + 8, what="load after the swap")
            await long_stream

            # The swap happened under load: v1 was still finishing a stream after v2 began
            # serving new ones, and every request after the swap ran on v2.
            first_v2 = min(s for m, s, _ in runs if m == "m:v2")
            assert any(m == "m:v1" and e > first_v2 for m, _, e in runs), runs
            assert not any(m == "m:v1" and s > first_v2 for m, s, _ in runs)
            assert [e.ref for e in node.models.loaded()] == ["m:v2"]

            # Rollback is the same operation the other way.
            r = await http.post(f"{base}/v1/models/deploy",
                                json={"model": "m:v1", "replace": "m:v2"})
            assert r.status_code == 200, r.text
            assert [e.ref for e in node.models.loaded()] == ["m:v1"]
            assert node.models.find("m").ref == "m:v1"
            after = len(outcomes)
            await eventually(lambda: len(outcomes) >= after + 4, what="load after rollback")
            stop.set()
            await asyncio.gather(*clients)
        finally:
            stop.set()
            await node.drain()
    assert loads == ["m:v1", "m:v2", "m:v1"]
    assert outcomes and all(o == (200, True) for o in outcomes), outcomes


async def test_deploy_refuses_what_it_cannot_do(gateway: Gateway) -> None:
    node = await start_versioned_node(gateway, [], [])
    base = f"http://127.0.0.1:{node.server.port}/v1/models/deploy"
    try:
        async with httpx.AsyncClient(timeout=20) as http:
            r = await http.post(base, json={"model": "m:v2"})
            assert r.status_code == 400 and r.json()["error"]["param"] == "replace"
            r = await http.post(base, json={"model": "m:v1", "replace": "m:v1"})
            assert r.status_code == 400
            r = await http.post(base, json={"model": "m:v2", "replace": "nope:v0"})
            assert r.status_code == 404
            proxy = f"http://127.0.0.1:{gateway.server.port}/v1/models/deploy"
            r = await http.post(proxy, json={"model": "m:v2", "replace": "other:v1"})
            assert r.status_code == 404 and r.json()["error"]["param"] == "replace"
        assert [e.ref for e in node.models.loaded()] == ["m:v1"]  # nothing changed
    finally:
        await node.drain()


async def test_a_model_the_node_did_not_know_loads_without_a_restart(gateway: Gateway) -> None:
    loads: list[str] = []
    node = await start_versioned_node(gateway, [], loads)
    try:
        async with httpx.AsyncClient(timeout=20) as http:
            r = await http.post(f"http://127.0.0.1:{node.server.port}/v1/models/load",
                                json={"model": "fresh:v1"})
            assert r.status_code == 200, r.text
        assert "fresh:v1" in loads and "fresh:v1" in node.models.names()
        await eventually(lambda: "fresh:v1" in gateway.pool.snapshot.models,
                         what="the node to re-register with the new model")
    finally:
        await node.drain()
