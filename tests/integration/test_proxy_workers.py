"""``inferno proxy --workers 2``: two processes on one API port behaving as one proxy.

Real processes: a fake-engine node registering with the proxy's ops port, and the proxy
supervisor with its two workers. Every request goes on a new connection, so the kernel
spreads them over both workers' SO_REUSEPORT sockets.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson
import pytest

from inferno.proxy.security.keys import ANONYMOUS
from inferno.proxy.security.ratelimit import Limits, LocalLimiter
from tests.conftest import require_redis
from tests.integration.procs import Proc, backend, get_json, node_ids, proxy, wait_until

pytestmark = pytest.mark.integration
CHAT = b'{"model":"fake-model","messages":[{"role":"user","content":"hi"}],"max_tokens":4}'


def start_cluster(tmp: Path, *proxy_args: str, env: dict[str, str] | None = None,
                  node_args: tuple[str, ...] = ()) -> tuple[Proc, Proc]:
    lb = proxy(tmp, "--workers", "2", *proxy_args).start(
        {"INFERNO_PROXY_DATA_DIR": str(tmp), "INFERNO_PROXY_LOG_FLUSH_INTERVAL": "0.05",
         "INFERNO_PROXY_DEFAULT_LEASE": "2", **(env or {})})
    node = backend(tmp, "n1", lb.ops_port, "--engine", "fake", "--model", "fake-model",
                   "--parallel", "16", *node_args).start()
    wait_until(lambda: "n1" in node_ids(lb.ops_port), 60, "n1 registered", lb, node)
    return lb, node


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Proc, Proc]]:
    lb, node = start_cluster(tmp_path)
    yield lb, node
    node.stop()
    lb.stop()


def chat(port: int, body: bytes = CHAT) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                 headers={"content-type": "application/json",
                                          "connection": "close"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def workers(lb: Proc) -> list[dict[str, Any]]:
    return (get_json(lb.ops_port, "/telemetry") or {}).get("workers", [])  # type: ignore[return-value]


def metric(lb: Proc, prefix: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{lb.ops_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix))


def log_rows(tmp: Path) -> int:
    with sqlite3.connect(tmp / "inferno.db") as db:
        return int(db.execute("select count(*) from inferno_request_log").fetchone()[0])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_both_workers_serve_one_registry_one_log_one_metrics(
        cluster: tuple[Proc, Proc], tmp_path: Path) -> None:
    lb, _ = cluster
    state = get_json(lb.ops_port, "/router/state") or {}
    views = state.get("workers", [])
    assert len(views) == 2  # type: ignore[arg-type]
    for view in views:  # type: ignore[union-attr]
        assert [n["id"] for n in view["nodes"]] == ["n1"], view  # registered once, in both

    n = 80
    codes = [chat(lb.port) for _ in range(n)]
    assert codes == [200] * n

    served = {w["pid"]: w["requests_total"] for w in workers(lb)}
    assert len(served) == 2 and all(count > 0 for count in served.values()), served
    assert sum(served.values()) == n
    assert metric(lb, 'inferno_proxy_requests_total{route="/v1/chat/completions",'
                      'status="200"}') == n
    wait_until(lambda: log_rows(tmp_path) >= n, 20, "request log rows", lb)
    assert log_rows(tmp_path) == n  # one row per request, whichever worker served it
    nodes = (get_json(lb.ops_port, "/telemetry") or {}).get("nodes", [])
    assert [x["requests"] for x in nodes] == [n]  # type: ignore[union-attr]


LIMIT_RPS, OFFERED_RPS, SECONDS = 20, 100, 5.0


async def offer(port: int) -> list[tuple[int, float]]:
    """``OFFERED_RPS`` requests a second for ``SECONDS``, each on its own connection: their
    statuses and when each was sent."""
    async with httpx.AsyncClient(timeout=15) as http:
        async def one() -> tuple[int, float]:
            sent = time.monotonic()
            r = await http.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                                content=CHAT, headers={"content-type": "application/json",
                                                       "connection": "close"})
            return r.status_code, sent

        tasks = []
        start = time.monotonic()
        for i in range(int(OFFERED_RPS * SECONDS)):
            delay = start + i / OFFERED_RPS - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        return list(await asyncio.gather(*tasks))


def one_limiter_admits(sent: list[float]) -> int:
    """What a single proxy's limiter admits of requests arriving at ``sent``: the rate,
    plus the burst window, minus what a stalled client left unused."""
    now = [0.0]
    limiter = LocalLimiter(clock=lambda: now[0])
    plan = Limits(default_rpm=LIMIT_RPS * 60).plan(ANONYMOUS, "fake-model", 0)
    assert plan is not None
    admitted = 0
    for t in sorted(sent):
        now[0] = t
        admitted += limiter.admit_now(plan.all) == 0.0
    return admitted


@pytest.mark.parametrize("counters", ["shared memory", "redis"])
def test_rate_limit_is_exact_across_workers(tmp_path: Path, counters: str) -> None:
    env = {"INFERNO_PROXY_DEFAULT_RPM": str(LIMIT_RPS * 60)}
    if counters == "redis":
        env.update(INFERNO_REDIS_URL=require_redis(),
                   INFERNO_PROXY_REDIS_PREFIX=f"test-workers-{uuid.uuid4().hex}")
    lb, node = start_cluster(tmp_path, env=env)
    try:
        answers = asyncio.run(offer(lb.port))
        served = [w["requests_total"] for w in workers(lb)]
    finally:
        node.stop()
        lb.stop()
    codes = [code for code, _ in answers]
    assert set(codes) <= {200, 429}
    # Both workers took a real share of the load: were each limiting alone, about twice
    # the limit would get through.
    assert len(served) == 2 and min(served) > 0.2 * len(codes), served
    ok = codes.count(200)
    expected = one_limiter_admits([t for _, t in answers])
    assert codes.count(429) > len(codes) / 2  # the limit was what bound
    print(f"\nrate limit over 2 workers ({counters}): {ok} of {len(codes)} admitted, one limiter: "
          f"{expected} ({(ok - expected) / expected:+.1%}); per worker {served}")
    assert abs(ok - expected) <= 0.05 * expected


def test_killed_worker_is_restarted_and_sigterm_drains_all(tmp_path: Path) -> None:
    # Slow answers (40 tokens at 50 ms) so requests are in flight when the signal comes.
    lb, node = start_cluster(tmp_path, node_args=("--fake-token-delay", "0.05"))
    try:
        first = {w["index"]: w["pid"] for w in workers(lb)}
        assert len(first) == 2
        os.kill(first[0], signal.SIGKILL)
        wait_until(lambda: {w["index"]: w["pid"] for w in workers(lb)}.get(0)
                   not in (None, first[0]), 60, "worker 0 started again", lb)
        again = {w["index"]: w["pid"] for w in workers(lb)}
        assert again[1] == first[1] and again[0] != first[0]
        # The new worker learns the node from its next heartbeat, then serves.
        wait_until(lambda: all(v["nodes"] for v in (get_json(lb.ops_port, "/router/state")
                                                    or {}).get("workers", [])),
                   20, "node known to the new worker", lb)
        assert metric(lb, "inferno_proxy_worker_restarts_total") == 1

        slow = CHAT.replace(b'"max_tokens":4', b'"max_tokens":40')

        async def drain() -> list[int]:
            async with httpx.AsyncClient(timeout=30) as http:
                async def one() -> int:
                    r = await http.post(f"http://127.0.0.1:{lb.port}/v1/chat/completions",
                                        content=slow, headers={"connection": "close"})
                    return r.status_code

                tasks = [asyncio.create_task(one()) for _ in range(16)]
                while sum(w["in_flight"] for w in await asyncio.to_thread(workers, lb)) < 16:
                    await asyncio.sleep(0.05)
                busy = [w["in_flight"] for w in workers(lb)]
                assert all(b > 0 for b in busy), busy  # both workers are mid-request
                lb.signal(signal.SIGTERM)
                return list(await asyncio.gather(*tasks))

        codes = asyncio.run(asyncio.wait_for(drain(), 60))
        assert codes == [200] * 16  # in-flight requests finished during the drain
        assert lb.wait(30) == 0
        assert not any(alive(pid) for pid in again.values())
    finally:
        node.stop()
        lb.stop()


def health(lb: Proc) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{lb.ops_port}/health", timeout=5) as r:
            return r.read().decode().strip()
    except urllib.error.HTTPError as exc:
        return f"{exc.code} {exc.read().decode().strip()}"


def test_health_says_unresponsive_while_every_worker_is_stuck(
        cluster: tuple[Proc, Proc]) -> None:
    lb, _ = cluster
    pids = [w["pid"] for w in workers(lb)]
    assert len(pids) == 2 and health(lb) == "healthy"
    os.kill(pids[0], signal.SIGSTOP)  # one stuck worker: the other still serves
    try:
        until = time.monotonic() + 4  # longer than the staleness window (3 s)
        while time.monotonic() < until:
            assert health(lb) == "healthy"
        # The stuck worker is left out of the merged answers rather than waited for.
        assert [w["index"] for w in workers(lb)] == [1]
        os.kill(pids[1], signal.SIGSTOP)
        wait_until(lambda: health(lb) == "503 unresponsive", 10, "unresponsive", lb)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    wait_until(lambda: health(lb) == "healthy", 10, "healthy again", lb)


def test_a_batch_runs_on_worker_0_alone_and_completes_whole(
        cluster: tuple[Proc, Proc]) -> None:
    """Every worker serves the Batch and Files API; worker 0 alone dispatches the items,
    so it sees every background request on a node (and yields to the interactive
    requests the other workers publish on their board)."""
    lb, _ = cluster
    n = 60
    lines = b"".join(
        b'{"custom_id":"c%d","method":"POST","url":"/v1/chat/completions","body":%s}\n'
        % (i, CHAT) for i in range(n))
    before = {w["index"]: w["requests_total"] for w in workers(lb)}
    base = f"http://127.0.0.1:{lb.port}/v1"
    with httpx.Client(timeout=30, headers={"connection": "close"}) as http:
        up = http.post(f"{base}/files", data={"purpose": "batch"},
                       files={"file": ("in.jsonl", lines)})
        assert up.status_code == 200, up.text
        made = http.post(f"{base}/batches", json={
            "input_file_id": up.json()["id"], "endpoint": "/v1/chat/completions",
            "completion_window": "24h"})
        assert made.status_code == 200, made.text
        url = f"{base}/batches/{made.json()['id']}"
        # Each poll on a new connection: the reads land on both workers.
        wait_until(lambda: http.get(url).json()["status"] in ("completed", "failed"), 60,
                   "the batch finished", lb)
        done = http.get(url).json()
        assert done["status"] == "completed", done
        assert done["request_counts"] == {"total": n, "completed": n, "failed": 0}
        out = http.get(f"{base}/files/{done['output_file_id']}/content")
        ids = sorted(json_line["custom_id"] for json_line in map(orjson.loads,
                                                                 out.content.splitlines()))
        assert ids == sorted(f"c{i}" for i in range(n))
    after = {w["index"]: w["requests_total"] for w in workers(lb)}
    assert after[0] - before[0] == n and after[1] == before[1], (before, after)
