"""The response cache: exact matches only, per key, complete answers only, L1 and L2."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx2 as httpx
import pytest
from prometheus_client import CollectorRegistry

from inferno.api.node import Registration
from inferno.proxy.cache import Entry, ResponseCache, cache_key, wants_cache
from inferno.proxy.security.metrics import SecurityMetrics
from tests.conftest import start_fake_node, start_gateway

MSG = [{"role": "user", "content": "hello"}]


@pytest.mark.parametrize(
    ("data", "header", "eligible"),
    [
        pytest.param({"temperature": 0}, None, True, id="temperature-0"),
        pytest.param({"temperature": 0.0}, None, True, id="temperature-0.0"),
        pytest.param({}, None, False, id="default-temperature"),
        pytest.param({"temperature": 0.7}, None, False, id="sampling"),
        pytest.param({"temperature": False}, None, False, id="bool-is-not-0"),
        pytest.param({"temperature": 0.7}, "on", True, id="opt-in-header"),
        pytest.param({"temperature": 0, "n": 2}, None, False, id="several-choices"),
    ],
)
def test_what_is_cacheable(data: dict[str, object], header: str | None, eligible: bool) -> None:
    assert wants_cache(data, header) is eligible


def test_keys_are_canonical_and_scoped() -> None:
    a = {"model": "m", "messages": MSG, "temperature": 0}
    b = {"temperature": 0, "messages": MSG, "model": "m", "user": "someone"}
    assert cache_key("/c", "k1", a) == cache_key("/c", "k1", b)
    assert cache_key("/c", "k1", a) != cache_key("/c", "k2", a)
    assert cache_key("/c", "k1", a) != cache_key("/d", "k1", a)
    assert cache_key("/c", "k1", a) != cache_key("/c", "k1", {**a, "max_tokens": 3})


async def test_l1_evicts_by_bytes_and_l2_survives(tmp_path: Path) -> None:
    metrics = SecurityMetrics(CollectorRegistry())
    cache = ResponseCache(
        metrics, max_bytes=1000, ttl=60, disk_dir=tmp_path, disk_max_bytes=1 << 20
    )
    for i in range(5):
        cache.put(bytes([i]) * 32, Entry(b"x" * 300, "application/json", False, 1, 2, 1e12))
    await cache.close()
    assert cache._bytes <= 1000 and len(cache._l1) == 2
    fresh = ResponseCache(
        metrics, max_bytes=1000, ttl=60, disk_dir=tmp_path, disk_max_bytes=1 << 20
    )
    entry = await fresh.get(bytes([0]) * 32)  # evicted from L1 long ago, read from disk
    assert entry is not None and entry.body == b"x" * 300 and entry.completion_tokens == 2


def _content(r: httpx.Response) -> str:
    """The assistant text of a 200 answer, streamed (SSE) or not."""
    assert r.status_code == 200, (r.status_code, r.text)
    if r.headers["content-type"].startswith("text/event-stream"):
        assert r.text.rstrip().endswith("data: [DONE]"), r.text
        return "".join(
            c["delta"].get("content") or ""
            for line in r.text.splitlines()
            if line.startswith("data: {")
            for c in json.loads(line[6:])["choices"]
        )
    return str(r.json()["choices"][0]["message"]["content"])


def _ids(r: httpx.Response) -> set[str]:
    """The completion id(s) in an answer: a new generation gets a new id, a cached one not."""
    if r.headers["content-type"].startswith("text/event-stream"):
        return {
            json.loads(line[6:])["id"] for line in r.text.splitlines() if line.startswith("data: {")
        }
    return {r.json()["id"]}


async def test_cache_through_the_proxy(tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path, cache=True)
    node = await start_fake_node()
    try:
        gw.pool.upsert(
            Registration(
                id="n",
                address=f"127.0.0.1:{node.server.port}",
                metrics_port=6100,
                models=["fake-model"],
                lease_seconds=60,
            )
        )
        url = f"http://127.0.0.1:{gw.server.port}/v1/chat/completions"
        body = {"model": "fake-model", "messages": MSG, "max_tokens": 3, "temperature": 0}
        async with httpx.AsyncClient() as http:
            first = await http.post(url, json=body)
            second = await http.post(url, json=body)
            bypass = await http.post(url, json=body, headers={"cache-control": "no-cache"})
            warm = await http.post(url, json={**body, "temperature": 0.5})
            s1 = await http.post(url, json={**body, "stream": True})
            s2 = await http.post(url, json={**body, "stream": True})
            metrics = (await http.get(f"http://127.0.0.1:{gw.ops.port}/metrics")).text
        # Every answer is a complete 200 with generated text, before any hit/miss claim.
        for r in (first, second, bypass, warm, s1, s2):
            assert _content(r).strip(), r.text
        assert first.headers["x-inferno-backend"] == "n"
        assert "x-inferno-cache" not in first.headers
        # The hit is the stored answer byte for byte (same completion id: no new generation).
        assert second.headers["x-inferno-cache"] == "hit"
        assert second.headers["x-inferno-backend"] == "cache"
        assert second.content == first.content and _ids(second) == _ids(first)
        # no-cache and a sampling temperature go to the node: a fresh generation.
        for r in (bypass, warm):
            assert "x-inferno-cache" not in r.headers
            assert r.headers["x-inferno-backend"] == "n"
            assert _ids(r).isdisjoint(_ids(first))
        assert "x-inferno-cache" not in s1.headers and s1.headers["x-inferno-backend"] == "n"
        assert s2.headers["x-inferno-cache"] == "hit"
        assert s1.content == s2.content and _ids(s1) == _ids(s2)
        assert _content(s1) == _content(first)  # temperature 0: the same text either way
        assert 'inferno_proxy_cache_total{result="hit"} 2.0' in metrics
        assert 'inferno_proxy_cache_total{result="bypass"} 1.0' in metrics
    finally:
        await node.drain()
        await gw.drain()


async def test_cut_streams_are_never_cached(tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path, cache=True)
    served = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await reader.readuntil(b"\r\n\r\n")
        served += 1
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        event = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
        writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
        await writer.drain()
        writer.close()  # cut before [DONE]

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        gw.pool.upsert(
            Registration(
                id="flaky",
                address=f"127.0.0.1:{port}",
                metrics_port=6100,
                models=["fake-model"],
                lease_seconds=60,
            )
        )
        url = f"http://127.0.0.1:{gw.server.port}/v1/chat/completions"
        body = {"model": "fake-model", "messages": MSG, "temperature": 0, "stream": True}
        async with httpx.AsyncClient() as http:
            for i in range(2):
                r = await http.post(url, json=body)
                # The cut stream reached the client as what it was: the relayed start, no [DONE].
                assert r.status_code == 200, r.text
                assert r.headers["x-inferno-backend"] == "flaky"
                assert '"content":"Hi"' in r.text and "[DONE]" not in r.text, r.text
                assert "x-inferno-cache" not in r.headers
                assert served == i + 1  # each request reached the node: nothing was stored
            metrics = (await http.get(f"http://127.0.0.1:{gw.ops.port}/metrics")).text
        assert 'inferno_proxy_cache_total{result="miss"} 2.0' in metrics
        assert 'result="hit"} ' not in metrics or 'result="hit"} 0.0' in metrics
    finally:
        server.close()
        await gw.drain()
