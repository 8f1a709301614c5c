"""The dashboard at /ui over HTTP: sign-in, every page from a seeded store, the request
log's filters and pages, key management, the live stream."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2 as httpx
import orjson
import pytest
from sqlalchemy import text

from inferno.proxy.gateway import Gateway
from inferno.proxy.security.keys import create_key
from tests.conftest import start_gateway
from tests.ui_seed import seed


def base(gw: Gateway) -> str:
    return f"http://127.0.0.1:{gw.server.port}"


async def test_sign_in_with_a_key_or_a_session_cookie(tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path, auth="on")
    try:
        store = gw.security.store
        assert store is not None
        admin, _ = await create_key(store, name="ops", scope="admin")
        user, _ = await create_key(store, name="app", scope="user")
        await gw.security.keys.refresh()
        async with httpx.AsyncClient(base_url=base(gw)) as http:
            r = await http.get("/ui/nodes")
            assert r.status_code == 303 and r.headers["location"] == "/ui/login"
            assert (await http.get("/ui/live")).status_code == 401
            r = await http.get("/ui/nodes", headers={"authorization": f"Bearer {user}"})
            assert r.status_code == 403
            r = await http.get("/ui/nodes", headers={"authorization": f"Bearer {admin}"})
            assert r.status_code == 200 and "<h2>Nodes</h2>" in r.text
            r = await http.post("/ui/login", data={"key": user})
            assert r.status_code == 401 and "not a valid admin key" in r.text
            r = await http.post("/ui/login", data={"key": admin},
                                headers={"origin": "https://evil.example"})
            assert r.status_code == 403
            r = await http.post("/ui/login", data={"key": admin})
            assert r.status_code == 303
            cookie = r.headers["set-cookie"]
            assert admin not in cookie  # a session token, never the key
            for flag in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/ui"):
                assert flag in cookie
            token = cookie.split(";")[0]
            r = await http.get("/ui", headers={"cookie": token})
            assert r.status_code == 200 and "Self-healing timeline" in r.text
            r = await http.post("/ui/logout", headers={"cookie": token})
            assert r.status_code == 303 and "Max-Age=0" in r.headers["set-cookie"]
            r = await http.get("/ui", headers={"cookie": token})
            assert r.status_code == 303  # the session is gone
    finally:
        await gw.drain()


@pytest.fixture
async def seeded(tmp_path: Path) -> AsyncIterator[Gateway]:
    # Auth off for good: with "auto", the first key created here would turn it on.
    gw = await start_gateway(tmp_path, auth="none")
    assert gw.security.store is not None
    await seed(gw.security.store, rows=120)
    gw.events.emit("ejected", "node-1", "breaker open for 5.0 s after HTTP 502")
    yield gw
    await gw.drain()


async def test_every_page_renders_from_the_seeded_store(seeded: Gateway) -> None:
    async with httpx.AsyncClient(base_url=base(seeded)) as http:
        pages = {"/ui": ["Self-healing timeline", "node-1", "breaker open", "scale up",
                         "queue wait p95 over target"],
                 "/ui/nodes": ["No nodes have registered."],
                 "/ui/autoscaler": ['data-pool="default"', "queue wait p95 over target (3.0 s)"],
                 "/ui/requests": ["fake-model", "other-model", "Older requests"],
                 "/ui/usage": ["key0", "other-model", "Create key"]}
        for path, expected in pages.items():
            r = await http.get(path)
            assert r.status_code == 200, path
            assert r.headers["content-type"].startswith("text/html")
            assert "default-src 'self'" in r.headers["content-security-policy"]
            for text_ in expected:
                assert text_ in r.text, (path, text_)
            for asset in re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', r.text):
                assert (await http.get(asset)).status_code == 200, asset
        assert (await http.get("/ui/static/../app.py")).status_code == 404
        assert (await http.get("/ui/nope")).status_code == 404


async def test_requests_are_filtered_and_paged_on_the_server(seeded: Gateway) -> None:
    async with httpx.AsyncClient(base_url=base(seeded)) as http:
        r = await http.get("/ui/requests", params={"status": "5xx", "model": "fake-model"})
        ids = re.findall(r'<tr data-id="([0-9a-f]+)"', r.text)
        # Rows i % 5 == 4 are 502s; of those, even i are fake-model: 12 of 120.
        assert len(ids) == 12
        assert "Older requests" not in r.text
        seen: list[str] = []
        url = "/ui/requests"
        for _ in range(5):
            page = await http.get(url)
            seen += re.findall(r'<tr data-id="([0-9a-f]+)"', page.text)
            m = re.search(r'id="older" href="([^"]+)"', page.text)
            if m is None:
                break
            url = m.group(1).replace("&amp;", "&")
        assert len(seen) == 120 and len(set(seen)) == 120  # every row once, newest first
        detail = (await http.get(f"/ui/api/requests/{seen[0]}")).json()
        assert detail["request_id"] == seen[0] and detail["request_body"]
        assert (await http.get("/ui/api/requests/nope")).status_code == 404
        assert (await http.get("/ui/requests", params={"status": "x"})).status_code == 400
        assert (await http.get("/ui/requests", params={"before": "x'"})).status_code == 400


async def test_admins_create_and_revoke_keys(seeded: Gateway) -> None:
    async with httpx.AsyncClient(base_url=base(seeded)) as http:
        r = await http.post("/ui/keys", data={"name": "team-a", "scope": "user"})
        key = re.search(r'<code id="new-key">(inf_[^<]+)</code>', r.text)
        assert key is not None
        assert seeded.security.keys.verify(key.group(1)) is not None
        key_id = re.search(r'data-key="([^"]+)"', r.text)
        assert key_id is not None
        r = await http.post(f"/ui/keys/{key_id.group(1)}/revoke")
        assert r.status_code == 303
        assert seeded.security.keys.verify(key.group(1)) is None
        r = await http.post("/ui/keys", data={"name": "", "scope": "user"})
        assert "needs a name" in r.text


async def test_live_stream_sends_nodes_figures_and_new_events(seeded: Gateway) -> None:
    async with httpx.AsyncClient(base_url=base(seeded)) as http, \
            http.stream("GET", "/ui/live", params={"after": "0"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        buf = ""
        async for chunk in r.aiter_text():
            buf += chunk
            if "event: snapshot" in buf and buf.endswith("\n\n"):
                break
    data = orjson.loads(re.search(r"^data: (.*)$", buf, re.M).group(1))  # type: ignore[union-attr]
    assert data["events"][-1]["kind"] == "ejected"
    assert {"rps", "error_rate", "ttft_p95", "cost_per_hour"} <= set(data["summary"])
    assert data["nodes"] == []


async def test_request_log_filters_use_their_indexes(seeded: Gateway) -> None:
    store = seeded.security.store
    assert store is not None
    async with store.engine.connect() as conn:
        for column, index in (("model", "ix_inferno_request_log_model_ts"),
                              ("key_id", "ix_inferno_request_log_key_ts")):
            plan = (await conn.execute(text(
                f"EXPLAIN QUERY PLAN SELECT request_id FROM inferno_request_log WHERE "
                f"{column} = 'x' ORDER BY ts DESC LIMIT 51"))).all()
            assert index in str(plan) and "TEMP B-TREE" not in str(plan)


async def test_live_stream_ends_when_the_proxy_drains(tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path, drain_timeout=30)
    async with httpx.AsyncClient(base_url=base(gw)) as http, \
            http.stream("GET", "/ui/live") as r:
        chunks = r.aiter_text()
        assert "retry:" in await anext(chunks)  # the stream is open
        drain = asyncio.create_task(gw.drain())
        rest = [c async for c in chunks]  # ends instead of holding the drain for 30 s
        await asyncio.wait_for(drain, 10)
    assert drain.done() and rest is not None
