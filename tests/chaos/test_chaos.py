"""Chaos tests: the proxy under node faults, on 127.0.0.1, each bounded to seconds.

Figures each test measured are printed (run with ``-s`` to see them); the closing notes
quote them. The proxy runs in-process; nodes are in-process chaos nodes or real
``inferno backend`` processes (fake engine) that the tests SIGKILL and SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx2 as httpx
import pytest_asyncio

from inferno.core.config import ProxySettings
from inferno.net import HttpClient
from inferno.proxy.gateway import Gateway
from tests.chaos.load import LoadReport, Outcome, one_request, open_loop
from tests.chaos.node import ChaosNode
from tests.integration.procs import Proc, backend, node_ids, wait_until
from tests.polling import eventually

FAST = {
    "connect_timeout": 0.5,
    "response_timeout": 5.0,
    "stream_idle_timeout": 5.0,
    "request_timeout": 10.0,
    "base_ejection": 1.0,
    "max_ejection": 4.0,
    "health_interval": 0.25,
    "health_timeout": 0.5,
    "default_lease": 2.0,
    "drain_timeout": 2.0,
}


async def start_gateway(**overrides: object) -> Gateway:
    settings = ProxySettings.model_validate({"port": 0, "ops_port": 0, **FAST, **overrides})
    gw = Gateway(settings)
    await gw.start()
    return gw


@pytest_asyncio.fixture
async def chaos_nodes() -> AsyncIterator[list[ChaosNode]]:
    nodes = [ChaosNode(f"c{i}") for i in range(3)]
    for n in nodes:
        await n.start()
    yield nodes
    for n in nodes:
        await n.stop()


def register(gw: Gateway, nodes: list[ChaosNode]) -> None:
    from inferno.api.node import Registration

    for n in nodes:
        gw.pool.upsert(Registration.model_validate(n.registration()))


def summary(name: str, report: LoadReport, **figures: object) -> None:
    lat = sorted(o.latency for o in report.outcomes)
    p99 = lat[int(len(lat) * 0.99) - 1] if lat else 0.0
    print(
        f"\n[chaos:{name}] requests={len(report.outcomes)} "
        f"errors={len(report.errors())} p50={statistics.median(lat) * 1000:.0f}ms "
        f"p99={p99 * 1000:.0f}ms behind={report.behind * 1000:.0f}ms "
        + " ".join(f"{k}={v}" for k, v in figures.items())
    )


def fake_backend(tmp: Path, name: str, lb_ops: int) -> Proc:
    return backend(
        tmp,
        name,
        lb_ops,
        "--engine",
        "fake",
        "--served-name",
        "fake-model",
        "--fake-token-delay",
        "0.01",
        "--heartbeat-interval",
        "0.3",
        "--lease-seconds",
        "2",
        "--parallel",
        "8",
    )


# 1 -------------------------------------------------------------------------------------
def stream_cutter(
    procs: list[Proc], kills: list[tuple[str, float]], killed: list[Proc]
) -> Callable[[Outcome], Awaitable[None]]:
    """SIGKILL the node that is serving a stream, once that stream has begun."""

    async def cut(o: Outcome) -> None:
        victim = next(p for p in procs if p.name == o.backend)
        victim.signal(signal.SIGKILL)
        kills.append((victim.name, time.monotonic()))
        killed.append(victim)

    return cut


async def test_kill_one_of_three_nodes_under_load(tmp_path: Path) -> None:
    gw = await start_gateway()
    procs = [fake_backend(tmp_path, f"k{i}", gw.ops.port).start() for i in range(3)]
    try:
        await asyncio.to_thread(
            wait_until, lambda: node_ids(gw.ops.port) >= {"k0", "k1", "k2"}, 30, "3 nodes", *procs
        )
        kills: list[tuple[str, float]] = []
        probes: list[Outcome] = []

        async def killer() -> None:
            # Each round kills the node serving a long probe stream mid-way, so every
            # round cuts at least that stream (the load's own streams may or may not be).
            async with contextlib.AsyncExitStack() as stack:
                client = HttpClient()
                stack.push_async_callback(client.aclose)
                for round_ in range(3):
                    await asyncio.sleep(2.5)  # the scenario: a kill every few seconds of load
                    killed: list[Proc] = []
                    probes.append(
                        await one_request(
                            client,
                            gw.server.port,
                            -1 - round_,
                            True,
                            max_tokens=300,
                            on_first_event=stream_cutter(procs, kills, killed),
                        )
                    )
                    for victim in killed:
                        await asyncio.to_thread(victim.wait, 10)
                        await asyncio.sleep(1.0)  # the scenario: the node stays down 1 s
                        victim.start()

        chaos = asyncio.create_task(killer())
        report = await open_loop(
            gw.server.port, rate=30, duration=10, stream_fraction=0.3, max_tokens=20
        )
        await chaos
        cut = [o for o in [*report.outcomes, *probes] if o.kind == "stream_error"]
        # A cut stream ends (with its error event) within 1 s of the kill that cut it.
        kill_times = [t for _, t in kills]
        cut_delays = [min(o.ended - k for k in kill_times if k <= o.ended) for o in cut]
        summary(
            "kill",
            report,
            kills=len(kills),
            cut_streams=len(cut),
            max_cut_delay_ms=round(max(cut_delays, default=0) * 1000),
            attempts_per_request=round(
                sum(o.attempts for o in report.outcomes) / len(report.outcomes), 3
            ),
        )
        # What the scenario claims happened: three kills, each cutting a live stream.
        assert len(kills) == 3 and len(probes) == 3
        assert all(o.kind == "stream_error" for o in probes), [o.detail for o in probes]
        assert all(o.events >= 1 for o in probes)  # cut mid-stream, not refused
        assert len(cut) >= 3
        assert {o.backend for o in cut} <= {name for name, _ in kills}
        # How the cuts and the rest of the load were handled.
        assert report.errors(stream=False) == []
        assert all(o.kind in ("ok", "stream_error") for o in report.outcomes), [
            o.detail for o in report.errors()
        ]
        assert all(o.error_valid for o in [*report.outcomes, *probes])
        assert all(d <= 1.0 for d in cut_delays), cut_delays
        # And the killed nodes came back.
        await asyncio.to_thread(
            wait_until,
            lambda: node_ids(gw.ops.port) >= {"k0", "k1", "k2"},
            30,
            "the killed nodes to rejoin",
            *procs,
        )
    finally:
        for p in procs:
            p.stop()
        await gw.drain()


# 2 -------------------------------------------------------------------------------------
async def test_failing_node_is_ejected_then_readmitted(chaos_nodes: list[ChaosNode]) -> None:
    gw = await start_gateway(eject_after_failures=5)
    register(gw, chaos_nodes)
    bad = chaos_nodes[0]
    readmitted: list[float] = []
    try:

        async def fault() -> float:
            await asyncio.sleep(1.0)  # the scenario: 1 s of healthy load first
            await bad.set_mode("status:500")
            failing_since = time.monotonic()

            def ejected() -> bool:
                node = gw.pool.get(bad.id)
                return node is not None and node.breaker.state != "closed"

            await eventually(
                ejected,
                timeout=3.0,
                interval=0.005,
                what="the failing node's ejection",
            )
            ejected_after = time.monotonic() - failing_since
            await asyncio.sleep(2.0)  # the scenario: it keeps failing 2 s, then heals
            await bad.set_mode("ok")
            await eventually(
                lambda: not ejected(), timeout=4.0, interval=0.005, what="the node's readmission"
            )
            readmitted.append(time.monotonic())
            return ejected_after

        chaos = asyncio.create_task(fault())
        report = await open_loop(gw.server.port, rate=40, duration=7)
        ejected_after = await chaos
        node = gw.pool.get(bad.id)
        assert node is not None
        failed = bad.by_mode.get("status:500", 0)
        summary(
            "eject",
            report,
            failures_seen_by_bad_node=failed,
            ejections=node.breaker.ejections,
            ejected_after_ms=round(ejected_after * 1000),
            ok_after_heal=bad.by_mode.get("ok", 0),
        )
        # What the scenario claims happened: the node failed, was ejected, and healed.
        assert failed >= 5 and node.breaker.ejections >= 1
        assert bad.by_mode.get("ok", 0) > 0
        assert report.errors() == []  # every failure was retried on a healthy node
        # 5 to trip, plus one half-open probe per re-ejection while it was still failing.
        assert failed <= 5 + node.breaker.ejections
        assert node.breaker.state == "closed"  # re-admitted once it healed
        # Requests sent after its readmission reach it again (by send time, not the last N
        # outcomes: a load generator that fell behind shifts which requests those are).
        assert readmitted, "the node was never readmitted before the load ended"
        served_after_heal = sum(
            1 for o in report.outcomes if o.started >= readmitted[0] and o.backend == bad.id
        )
        assert served_after_heal > 0
    finally:
        await gw.drain()


# 3 -------------------------------------------------------------------------------------
async def test_all_nodes_503_retries_stay_within_budget(chaos_nodes: list[ChaosNode]) -> None:
    gw = await start_gateway(retry_budget_min_per_s=1.0)
    register(gw, chaos_nodes)
    for n in chaos_nodes:
        await n.set_mode("status:503")
    try:
        report = await open_loop(gw.server.port, rate=50, duration=5)
        attempts = sum(n.requests for n in chaos_nodes)
        ratio = attempts / len(report.outcomes)
        summary("all-503", report, upstream_attempts=attempts, ratio=round(ratio, 3))
        assert len(report.outcomes) == 250
        assert 1.0 <= ratio <= 1.3  # every request reached a node; few were retried
        assert all(o.status == 503 and o.retry_after for o in report.outcomes)
        assert all(o.error_valid for o in report.outcomes)
    finally:
        await gw.drain()


# 4 -------------------------------------------------------------------------------------
async def test_hung_node_and_stalled_stream(chaos_nodes: list[ChaosNode]) -> None:
    timeouts = {"response_timeout": 1.0, "stream_idle_timeout": 1.0, "request_timeout": 4.0}
    gw = await start_gateway(routing="round-robin", **timeouts)
    hung, _good, staller = chaos_nodes
    await hung.set_mode("hang")
    await staller.set_mode("stall")
    register(gw, chaos_nodes)
    try:
        report = await open_loop(gw.server.port, rate=15, duration=4, stream_fraction=0.3)
        worst = max(o.latency for o in report.outcomes)
        stalls = [o for o in report.outcomes if o.kind == "stream_error"]
        summary("hung-stall", report, worst_ms=round(worst * 1000), stalled_streams=len(stalls))
        assert worst <= 4.0 + 0.5  # nothing outlives the deadline
        assert report.errors(stream=False) == []  # non-streams failed over after 1 s
        assert all(o.kind in ("ok", "stream_error") for o in report.outcomes)
        assert stalls and all(0.8 <= o.ended - o.first_byte <= 2.0 for o in stalls)
        assert hung.requests > 0  # the hung node was tried (and given up on)
        await eventually(
            lambda: gw.api.in_flight == 0,
            timeout=2.0,
            what="the proxy to have no request in flight",
        )
        await eventually(
            lambda: all(n.outstanding == 0 for n in gw.pool.nodes()),
            timeout=2.0,
            what="every node's outstanding count back to 0",
        )
        # The proxy closed every abandoned upstream request (the nodes saw them end).
        await eventually(
            lambda: hung.in_flight == 0 and staller.in_flight == 0,
            timeout=2.0,
            what="the hung and stalled nodes to see their requests end",
        )
    finally:
        await gw.drain()


# 5 -------------------------------------------------------------------------------------
async def test_overload_is_rejected_fast_and_health_stays_up() -> None:
    node = ChaosNode("slow", answer_delay=0.3)
    await node.start()
    gw = await start_gateway(max_per_node=2, queue_size=4, queue_wait=0.5)
    register(gw, [node])
    health_latencies: list[float] = []

    async def probe_health() -> None:
        async with httpx.AsyncClient() as http:
            for _ in range(20):
                t = time.monotonic()
                r = await http.get(f"http://127.0.0.1:{gw.ops.port}/health")
                assert r.status_code == 200
                health_latencies.append(time.monotonic() - t)
                await asyncio.sleep(0.05)  # pacing: a probe every 50 ms during the overload

    try:
        prober = asyncio.create_task(probe_health())
        report = await open_loop(gw.server.port, rate=200, duration=1.0)
        await prober
        rejected = [o for o in report.outcomes if o.status == 503]
        ok = [o for o in report.outcomes if o.kind == "ok"]
        rej = sorted(o.latency for o in rejected)
        summary(
            "overload",
            report,
            ok=len(ok),
            rejected=len(rejected),
            reject_p50_ms=round(statistics.median(rej) * 1000, 1),
            reject_max_ms=round(rej[-1] * 1000, 1),
            health_max_ms=round(max(health_latencies) * 1000, 1),
        )
        assert len(ok) + len(rejected) == len(report.outcomes)
        assert len(rejected) > len(report.outcomes) / 2
        assert all(o.retry_after and o.error_valid for o in rejected)
        # Refused at once when the queue is full; at worst after the queue wait.
        assert rej[-1] <= 0.5 + 0.5
        assert max(health_latencies) < 0.5
    finally:
        await gw.drain()
        await node.stop()


# 6 -------------------------------------------------------------------------------------
async def test_drain_under_load_loses_nothing(tmp_path: Path) -> None:
    gw = await start_gateway()
    procs = [fake_backend(tmp_path, f"d{i}", gw.ops.port).start() for i in range(3)]
    try:
        await asyncio.to_thread(
            wait_until, lambda: node_ids(gw.ops.port) >= {"d0", "d1", "d2"}, 30, "3 nodes", *procs
        )
        gaps: list[float] = []

        async def rolling_restart() -> None:
            for i in range(3):
                await asyncio.sleep(2.0)  # the scenario: a restart every 2 s of load
                old = procs[i]
                fresh = fake_backend(tmp_path, f"d{i + 3}", gw.ops.port).start()
                procs.append(fresh)
                old.signal(signal.SIGTERM)
                t = time.monotonic()
                await eventually(
                    lambda: gw.pool.get(old.name) is None,  # noqa: B023
                    timeout=5.0,
                    interval=0.002,
                    what=f"{old.name} out of rotation",
                )
                gaps.append(time.monotonic() - t)  # SIGTERM -> out of rotation

        chaos = asyncio.create_task(rolling_restart())
        report = await open_loop(
            gw.server.port, rate=30, duration=8, stream_fraction=0.3, max_tokens=20
        )
        await chaos
        summary("drain", report, max_drain_gap_ms=round(max(gaps) * 1000, 1))
        assert len(gaps) == 3  # three nodes were drained
        # The replacements joined and took traffic.
        assert {o.backend for o in report.outcomes} & {"d3", "d4", "d5"}
        assert report.errors() == [], [o.detail for o in report.errors()]
        assert max(gaps) < 0.5
        for old in procs[:3]:
            assert await asyncio.to_thread(old.wait, 15) == 0
    finally:
        for p in procs:
            p.stop()
        await gw.drain()
