"""A node serving several models: routing by model, loading on demand, keep_alive, LRU
eviction under a memory budget, the load/unload/ps routes, and the proxy following along."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from inferno.backend.engines.fake import FakeEngine
from inferno.backend.node import BackendNode
from inferno.core.config import BackendSettings
from inferno.core.errors import ConfigError
from inferno.proxy.gateway import Gateway
from tests.polling import eventually


class SlowLoadFake(FakeEngine):
    """A fake whose load takes a while (as a real model's does) and is recorded."""

    loads: list[str]

    def load(self) -> None:
        time.sleep(0.3)
        self.loads.append(self.info.id)


async def start_node(
    tmp_path: Path,
    *,
    start: list[str],
    available: list[str] = (),  # type: ignore[assignment]
    sizes: dict[str, int] | None = None,
    token_delay: float = 0.0,
    **settings: Any,
) -> tuple[BackendNode, list[str]]:
    loads: list[str] = []
    sizes = sizes or {}

    def build(ref: str) -> FakeEngine:
        if ref.startswith("nope"):  # as resolve_model refuses a model it cannot find
            raise ConfigError(f"model '{ref}' is not in the store")
        path = "(fake)"
        if ref in sizes:
            f = tmp_path / f"{ref}.gguf"
            with f.open("wb") as fh:
                fh.truncate(sizes[ref])  # sparse: the size is what counts
            path = str(f)
        engine = SlowLoadFake(
            model_id=ref, n_ctx=256, parallel=4, token_delay=token_delay, path=path
        )
        engine.loads = loads
        return engine

    s = BackendSettings(
        port=0,
        ops_port=0,
        engine="fake",
        model=start,
        models_available=list(available),
        heartbeat_interval=0.2,
        drain_timeout=5.0,
        **settings,
    )
    node = BackendNode(s, build_engine=build, sweep_interval=0.05)
    await node.start()
    return node, loads


def url(node: BackendNode) -> str:
    return f"http://127.0.0.1:{node.server.port}"


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 3,
        "temperature": 0,
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    }


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=20) as client:
        yield client


async def test_requests_go_to_the_model_they_name(tmp_path: Path, http: httpx.AsyncClient) -> None:
    node, _ = await start_node(tmp_path, start=["alpha", "beta"])
    try:
        for model in ("alpha", "beta"):
            r = await http.post(f"{url(node)}/v1/chat/completions", json=chat(model))
            assert r.status_code == 200, r.text
            assert r.json()["model"] == model
        by_name = {e.name: e for e in node.models.entries}
        assert all(
            e.engine is not None and e.engine.stats().tokens_generated == 3
            for e in by_name.values()
        )
        r = await http.post(f"{url(node)}/v1/chat/completions", json=chat("gamma"))
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        listed = (await http.get(f"{url(node)}/v1/models")).json()["data"]
        assert {(m["id"], m["status"]) for m in listed} == {("alpha", "loaded"), ("beta", "loaded")}
    finally:
        await node.drain()


async def test_a_request_for_an_available_model_loads_it_and_waits(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    node, loads = await start_node(tmp_path, start=["alpha"], available=["beta"])
    try:
        listed = (await http.get(f"{url(node)}/v1/models")).json()["data"]
        assert {m["id"]: m["status"] for m in listed} == {"alpha": "loaded", "beta": "unloaded"}
        assert loads == ["alpha"]
        beta = node.models.find("beta")
        task = asyncio.create_task(http.post(f"{url(node)}/v1/chat/completions", json=chat("beta")))
        await eventually(lambda: beta.state == "loading", what="beta loading for the request")
        assert not task.done()  # the request waits for the load
        r = await task
        assert r.status_code == 200, r.text
        assert loads == ["alpha", "beta"] and beta.state == "loaded"
    finally:
        await node.drain()


async def test_keep_alive_zero_unloads_after_the_request(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    node, loads = await start_node(tmp_path, start=["alpha"], available=["beta"], keep_alive=0)
    try:
        r = await http.post(f"{url(node)}/v1/chat/completions", json=chat("beta"))
        assert r.status_code == 200, r.text
        beta = node.models.find("beta")
        await eventually(lambda: beta.state == "unloaded", what="beta unloaded after use")
        assert node.models.find("alpha").state == "loaded"  # models given at start stay
        r = await http.post(f"{url(node)}/v1/chat/completions", json=chat("beta"))
        assert r.status_code == 200 and loads.count("beta") == 2  # loads again on demand
    finally:
        await node.drain()


async def test_idle_models_past_keep_alive_are_swept(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    node, _ = await start_node(tmp_path, start=["alpha"], available=["beta"], keep_alive=0.3)
    try:
        r = await http.post(f"{url(node)}/v1/models/load", json={"model": "beta"})
        assert r.status_code == 200 and r.json()["keep_alive"] == 0.3
        await eventually(
            lambda: node.models.find("beta").state == "unloaded", what="the sweep to unload beta"
        )
    finally:
        await node.drain()


async def test_lru_eviction_spares_models_in_use_and_pinned_ones(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    mb = 1_000_000
    node, _ = await start_node(
        tmp_path,
        start=["pinned"],
        available=["a", "b", "c"],
        memory_budget=3 * mb,
        sizes={"pinned": mb, "a": mb, "b": mb, "c": mb},
        token_delay=0.02,
    )
    a, b, c = (node.models.find(n) for n in "abc")
    try:
        assert (await http.post(f"{url(node)}/v1/models/load", json={"model": "a"})).is_success
        # A slow stream holds a; then b is loaded (so a is the least recently used).
        async with http.stream(
            "POST", f"{url(node)}/v1/chat/completions", json=chat("a", max_tokens=200, stream=True)
        ) as stream:
            lines = stream.aiter_lines()
            assert (await anext(lines)).startswith("data:")
            assert a.in_flight == 1
            assert (await http.post(f"{url(node)}/v1/models/load", json={"model": "b"})).is_success
            assert a.last_used < b.last_used
            r = await http.post(f"{url(node)}/v1/models/load", json={"model": "c"})
            assert r.status_code == 200, r.text
            assert (a.state, b.state, c.state) == ("loaded", "unloaded", "loaded")
            assert node.models.find("pinned").state == "loaded"
            body = [line async for line in lines]
        assert body[-2:] == ["data: [DONE]", ""] or "data: [DONE]" in body
        assert not any('"error"' in line for line in body)
        # Idle now, a is the least recently used of a and c: loading b evicts a.
        await eventually(lambda: a.in_flight == 0, what="the stream to release a")
        r = await http.post(f"{url(node)}/v1/chat/completions", json=chat("c"))
        assert r.status_code == 200
        r = await http.post(f"{url(node)}/v1/models/load", json={"model": "b"})
        assert r.status_code == 200, r.text
        assert (a.state, b.state, c.state) == ("unloaded", "loaded", "loaded")
        assert node.models.find("pinned").state == "loaded"
    finally:
        await node.drain()


async def test_pinned_models_are_never_evicted_the_load_is_refused(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    mb = 1_000_000
    node, _ = await start_node(
        tmp_path,
        start=["alpha"],
        available=["b", "c"],
        memory_budget=2 * mb,
        sizes={"alpha": mb, "b": mb, "c": mb},
    )
    try:
        r = await http.post(f"{url(node)}/v1/models/load", json={"model": "b", "keep_alive": -1})
        assert r.status_code == 200 and r.json()["pinned"] is True
        r = await http.post(f"{url(node)}/v1/models/load", json={"model": "c"})
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "overloaded" and r.headers.get("retry-after")
        r = await http.post(f"{url(node)}/v1/chat/completions", json=chat("c"))
        assert r.status_code == 503  # on demand too
        assert [e.name for e in node.models.loaded()] == ["alpha", "b"]
    finally:
        await node.drain()


async def test_load_unload_and_ps_routes(tmp_path: Path, http: httpx.AsyncClient) -> None:
    node, _ = await start_node(tmp_path, start=["alpha"], available=["beta"])
    try:
        r = await http.post(
            f"{url(node)}/v1/models/load", json={"model": "beta", "keep_alive": "5m"}
        )
        assert r.status_code == 200, r.text
        row = r.json()
        assert row["name"] == "beta" and row["keep_alive"] == 300 and row["status"] == "loaded"
        ps = (await http.get(f"{url(node)}/v1/models/ps")).json()["data"]
        assert {p["name"] for p in ps} == {"alpha", "beta"}
        assert {"size", "expires_at", "in_flight", "last_used"} <= set(ps[0])
        r = await http.post(f"{url(node)}/v1/models/unload", json={"model": "beta"})
        assert r.status_code == 200 and r.json()["unloaded"] is True
        ps = (await http.get(f"{url(node)}/v1/models/ps")).json()["data"]
        assert [p["name"] for p in ps] == ["alpha"]
        r = await http.post(f"{url(node)}/v1/models/load", json={"model": "nope"})
        assert r.status_code == 404
        r = await http.post(
            f"{url(node)}/v1/models/load", json={"model": "beta", "keep_alive": "soon"}
        )
        assert r.status_code == 400
    finally:
        await node.drain()


async def test_model_routes_need_the_node_token_when_one_is_set(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    node, _ = await start_node(tmp_path, start=["alpha"], available=["beta"], node_token="s3cret")
    try:
        r = await http.post(f"{url(node)}/v1/models/load", json={"model": "beta"})
        assert r.status_code == 401
        r = await http.get(f"{url(node)}/v1/models/ps", headers={"authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = await http.post(
            f"{url(node)}/v1/models/load",
            json={"model": "beta"},
            headers={"authorization": "Bearer s3cret"},
        )
        assert r.status_code == 200, r.text
        r = await http.post(f"{url(node)}/v1/chat/completions", json=chat("beta"))
        assert r.status_code == 200  # inference stays open
    finally:
        await node.drain()


async def test_loading_and_unloading_one_model_does_not_disturb_another(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    node, loads = await start_node(tmp_path, start=["b"], available=["a"])
    statuses: list[int] = []
    stop = asyncio.Event()

    async def loop_on_b() -> None:
        deadline = time.monotonic() + 30  # bounded in time whatever happens
        while not stop.is_set() and time.monotonic() < deadline:
            r = await http.post(f"{url(node)}/v1/chat/completions", json=chat("b"))
            statuses.append(r.status_code)

    try:
        runner = asyncio.create_task(loop_on_b())
        for _ in range(3):
            before = len(statuses)
            r = await http.post(f"{url(node)}/v1/models/load", json={"model": "a"})
            assert r.status_code == 200, r.text
            r = await http.post(f"{url(node)}/v1/models/unload", json={"model": "a"})
            assert r.status_code == 200, r.text
            await eventually(
                lambda before=before: len(statuses) > before + 2,
                what="requests on b during the change",
            )
        stop.set()
        await runner
        assert loads.count("a") == 3
        assert statuses and set(statuses) == {200}, statuses
    finally:
        stop.set()
        await node.drain()


async def test_the_proxy_pool_follows_loads_and_unloads(
    tmp_path: Path, gateway: Gateway, http: httpx.AsyncClient
) -> None:
    node, _ = await start_node(
        tmp_path,
        start=["alpha"],
        available=["beta"],
        discovery_lb=f"127.0.0.1:{gateway.ops.port}",
        node_id="mm-1",
    )

    def pool_node() -> Any:
        return gateway.pool.get("mm-1")

    try:
        await eventually(lambda: pool_node() is not None, what="the node registered")
        assert pool_node().loaded == {"alpha"} and pool_node().available == {"beta"}
        assert {"alpha", "beta"} <= gateway.pool.snapshot.models  # beta: loads on demand
        await http.post(f"{url(node)}/v1/models/load", json={"model": "beta"})
        await eventually(
            lambda: pool_node().loaded == {"alpha", "beta"}, what="the pool to see beta loaded"
        )
        await http.post(f"{url(node)}/v1/models/unload", json={"model": "beta"})
        await eventually(
            lambda: pool_node().loaded == {"alpha"}, what="the pool to see beta unloaded"
        )
        # Through the proxy, a request for beta loads it on the node.
        r = await http.post(
            f"http://127.0.0.1:{gateway.server.port}/v1/chat/completions", json=chat("beta")
        )
        assert r.status_code == 200, r.text
        await eventually(
            lambda: pool_node().loaded == {"alpha", "beta"},
            what="the pool to see beta loaded on demand",
        )
    finally:
        await node.drain()


async def test_the_proxy_forwards_load_and_unload_with_an_admin_key(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    from inferno.proxy.security.keys import create_key
    from tests.conftest import start_gateway

    gw = await start_gateway(tmp_path / "proxy", node_tokens=["node-secret"])
    store = gw.security.store
    assert store is not None
    admin, admin_row = await create_key(store, name="ops", scope="admin", models=None, rpm=None,
                                        tpm=None)
    user, _ = await create_key(store, name="app", scope="user", models=None, rpm=None, tpm=None)
    await gw.security.keys.refresh()
    await eventually(lambda: gw.security.auth.enabled, what="auth on once keys exist")
    lb = f"127.0.0.1:{gw.ops.port}"
    n1, loads1 = await start_node(
        tmp_path,
        start=["alpha"],
        available=["beta"],
        discovery_lb=lb,
        node_id="n1",
        node_token="node-secret",
    )
    n2, loads2 = await start_node(
        tmp_path, start=["alpha"], discovery_lb=lb, node_id="n2", node_token="node-secret"
    )
    base = f"http://127.0.0.1:{gw.server.port}/v1/models"
    as_admin = {"authorization": f"Bearer {admin}"}
    try:
        await eventually(
            lambda: {n.id for n in gw.pool.nodes()} == {"n1", "n2"}, what="both nodes registered"
        )
        r = await http.post(f"{base}/load", json={"model": "beta"})
        assert r.status_code == 401
        r = await http.post(
            f"{base}/load", json={"model": "beta"}, headers={"authorization": f"Bearer {user}"}
        )
        assert r.status_code == 403
        assert loads1 == ["alpha"]  # refused: nothing loaded

        r = await http.post(
            f"{base}/load", json={"model": "beta", "keep_alive": "10m"}, headers=as_admin
        )
        assert r.status_code == 200, r.text
        [result] = r.json()["data"]
        assert result["node"] == "n1" and result["status"] == 200
        assert result["result"]["keep_alive"] == 600
        assert loads1 == ["alpha", "beta"] and loads2 == ["alpha"]
        n1_pool = gw.pool.get("n1")
        assert n1_pool is not None
        await eventually(lambda: "beta" in n1_pool.loaded, what="the pool to see beta")

        r = await http.get(f"{base}/ps", headers=as_admin)
        assert r.status_code == 200
        assert sorted((p["node"], p["name"]) for p in r.json()["data"]) == [
            ("n1", "alpha"),
            ("n1", "beta"),
            ("n2", "alpha"),
        ]

        r = await http.post(
            f"{base}/unload", json={"model": "alpha", "node": "n2"}, headers=as_admin
        )
        assert r.status_code == 200, r.text
        assert [(d["node"], d["result"]["unloaded"]) for d in r.json()["data"]] == [("n2", True)]
        r = await http.post(f"{base}/unload", json={"model": "beta"}, headers=as_admin)
        assert [d["node"] for d in r.json()["data"]] == ["n1"]
        await eventually(lambda: "beta" not in n1_pool.loaded, what="the pool to drop beta")
        r = await http.post(f"{base}/unload", json={"model": "beta"}, headers=as_admin)
        assert r.status_code == 404  # no node has it loaded any more

        # The CLI, over the same admin API (in a thread: it runs its own event loop).
        from typer.testing import CliRunner

        from inferno.cli import app

        def cli(*args: str) -> Any:
            return CliRunner().invoke(
                app,
                ["models", *args, "--url", f"http://127.0.0.1:{gw.server.port}", "--json"],
                env={"INFERNO_API_KEY": admin},
            )

        out = await asyncio.to_thread(cli, "load", "beta", "--node", "n1", "--keep-alive", "-1")
        assert out.exit_code == 0, out.output
        assert loads1.count("beta") == 2
        out = await asyncio.to_thread(cli, "ps")
        assert out.exit_code == 0 and '"beta"' in out.output, out.output
        out = await asyncio.to_thread(cli, "unload", "beta")
        assert out.exit_code == 0, out.output
        assert n1.models.find("beta").state == "unloaded"

        # Every change went to the audit trail, with the admin key as the actor.
        async def trail() -> list[dict[str, Any]]:
            rows = await store.audit.find(action="model")
            return rows if len(rows) >= 5 else []  # 2 loads, 3 unloads (one a 404)

        rows = await eventually(trail, what="model actions audited")
        assert [(r["action"], r["target"]) for r in rows[:2]] == [
            ("model.unload", "beta"), ("model.load", "beta")]
        assert {r["actor"] for r in rows} == {admin_row.id}
    finally:
        await n1.drain()
        await n2.drain()
        await gw.drain()
