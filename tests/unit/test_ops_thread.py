"""The ops server on its own thread: /health answers while the main loop is busy; every
other route still runs on the main loop."""

from __future__ import annotations

import asyncio
import http.client
import threading
import time

from prometheus_client import CollectorRegistry

from inferno.net import Request, Response
from inferno.ops import OpsServer


def get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request(method, path)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


async def test_health_answers_while_the_main_loop_is_busy() -> None:
    seen: list[str] = []

    async def mutate(req: Request) -> Response:
        seen.append(threading.current_thread().name)
        return Response.json({"ok": True})

    ops = OpsServer(health=lambda: "ready", telemetry=lambda: {"id": "x"},
                    registry=CollectorRegistry(), routes={("POST", "/registration"): mutate},
                    own_thread=True)
    port = await ops.start("127.0.0.1", 0)
    try:
        results: list[tuple[int, float]] = []

        def probe() -> None:
            for _ in range(5):
                t = time.monotonic()
                status, _ = get(port, "/health")
                results.append((status, time.monotonic() - t))

        prober = threading.Thread(target=probe)
        prober.start()
        busy_until = time.monotonic() + 0.5
        while time.monotonic() < busy_until:  # the main loop is stuck in Python code
            sum(range(1000))
        prober.join()
        assert [s for s, _ in results] == [200] * 5
        assert max(t for _, t in results) < 0.4  # answered during the busy stretch
        status, body = await asyncio.to_thread(get, port, "/registration", "POST")
        assert status == 200 and seen == ["MainThread"]  # mutations stay on the main loop
        status, body = await asyncio.to_thread(get, port, "/telemetry")
        assert status == 200 and b'"id"' in body
    finally:
        await ops.stop()
    assert not any(t.name == "ops-server" for t in threading.enumerate())
