"""The ops server on its own thread or behind its own front process: /health answers while
the main loop is busy; every other route still runs on the main loop."""

from __future__ import annotations

import asyncio
import http.client
import os
import sys
import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from inferno.net import Request, Response
from inferno.ops import OpsServer
from tests.polling import eventually


def get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request(method, path)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


@pytest.mark.parametrize("mode", ["own_thread", "own_process"])
async def test_health_answers_while_the_main_loop_is_busy(mode: str) -> None:
    seen: list[str] = []

    async def mutate(req: Request) -> Response:
        seen.append(threading.current_thread().name)
        return Response.json({"ok": True})

    ops = OpsServer(health=lambda: "ready", telemetry=lambda: {"id": "x"},
                    registry=CollectorRegistry(), routes={("POST", "/registration"): mutate},
                    **{mode: True})
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


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for whoever adopted it to reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


async def test_front_process_relays_reports_state_and_stalls_and_goes_away() -> None:
    state = ["loading"]
    ops = OpsServer(health=lambda: state[0], telemetry=lambda: {"id": "x"},
                    registry=CollectorRegistry(), own_process=True, stale_after=0.3)
    port = await ops.start("127.0.0.1", 0)
    sidecar = ops._sidecar
    assert sidecar is not None
    try:
        assert await asyncio.to_thread(get, port, "/health") == (503, b"loading\n")
        state[0] = "ready"  # seen at once: a state that is not "ready" is relayed
        assert await asyncio.to_thread(get, port, "/health") == (200, b"healthy\n")
        status, _ = await asyncio.to_thread(get, port, "/metrics")
        assert status == 200  # relayed to the main loop's server
        status, _ = await asyncio.to_thread(get, port, "/nowhere")
        assert status == 404
        status, _ = await asyncio.to_thread(get, port, "/health", "DELETE")
        assert status == 405
        # A main loop that stops turning stops the heartbeat: the probe says so.
        result: list[tuple[int, bytes]] = []
        prober = threading.Thread(target=lambda: (time.sleep(0.6),
                                                  result.append(get(port, "/health"))))
        prober.start()
        time.sleep(0.9)  # noqa: ASYNC251 - the point: this (the main) loop stops turning
        prober.join()
        assert result == [(503, b"unresponsive\n")]
        # The loop turns again: the heartbeat resumes and the probe says healthy.
        await eventually(
            lambda: asyncio.to_thread(lambda: get(port, "/health") == (200, b"healthy\n")),
            timeout=2.0, interval=0.05, what="healthy again once the loop turns")
    finally:
        await ops.stop()
    assert not _alive(sidecar.proc.pid)
    assert not os.path.exists(sidecar._path)  # noqa: ASYNC240


async def test_front_process_ends_with_its_parent() -> None:
    # A parent killed outright (no stop()) must not leave the ops port taken.
    script = (
        "import asyncio, sys\n"
        "from prometheus_client import CollectorRegistry\n"
        "from inferno.ops import OpsServer\n"
        "async def main():\n"
        "    ops = OpsServer(health=lambda: 'ready', telemetry=dict,\n"
        "                    registry=CollectorRegistry(), own_process=True)\n"
        "    await ops.start('127.0.0.1', 0)\n"
        "    print(ops._sidecar.proc.pid, flush=True)\n"
        "    await asyncio.sleep(60)\n"  # the parent idles until it is killed
        "asyncio.run(main())\n"
    )
    parent = await asyncio.create_subprocess_exec(sys.executable, "-c", script,
                                                  stdout=asyncio.subprocess.PIPE)
    assert parent.stdout is not None
    child = int(await asyncio.wait_for(parent.stdout.readline(), 30))
    assert _alive(child)
    parent.kill()
    await parent.wait()
    await eventually(lambda: not _alive(child), interval=0.05,
                     what="the front process to end with its parent")
