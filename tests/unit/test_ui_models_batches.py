"""The dashboard's Models and Batches pages over HTTP: rows equal what the pool, the
request log, the audit trail and the batch tables hold; deploy and cancel run the proxy's
own endpoints as the signed-in admin (and are audited as such); user keys are refused."""

from __future__ import annotations

import html
import math
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson
import pytest_asyncio

from inferno.api.node import Registration
from inferno.backend.node import BackendNode
from inferno.proxy.gateway import Gateway
from inferno.proxy.security.keys import create_key
from inferno.store.audit import AuditEvent
from tests.batch_support import (
    FlakyEngine,
    completion,
    jsonl,
    start_batch_gateway,
    start_node,
    until_served,
)
from tests.conftest import start_gateway
from tests.polling import eventually
from tests.ui_seed import seed, seed_batches
from tests.unit.test_hot_swap import start_versioned_node


def base(gw: Gateway) -> str:
    return f"http://127.0.0.1:{gw.server.port}"


def cells(page: str, attr: str) -> dict[str, str]:
    """Row key -> the row's HTML, for rows ``<tr data-{attr}="...">``."""
    rows = re.findall(rf'<tr data-{attr}="([^"]+)"[^>]*>(.*?)</tr>', page, re.S)
    return {html.unescape(k): v for k, v in rows}


def text(fragment: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


async def restarted_on_a_seeded_log(tmp_path: Path) -> tuple[Gateway, list[dict[str, Any]]]:
    """A proxy started on a request log that already holds 120 rows of the last minutes,
    once it has replayed them into its live statistics."""
    gw = await start_gateway(tmp_path, auth="none")
    try:
        assert gw.security.store is not None
        log = await seed(gw.security.store, rows=120)
    finally:
        await gw.drain()
    gw = await start_gateway(tmp_path, auth="none")  # the same database
    await eventually(lambda: sum(p["requests"] for p in gw.stats.series(3600)) >= len(log),
                     what="the last hour replayed")
    return gw, log


async def test_models_page_rows_equal_the_pool_log_and_audit_trail(tmp_path: Path) -> None:
    gw, log = await restarted_on_a_seeded_log(tmp_path)
    try:
        store = gw.security.store
        assert store is not None
        gw.pool.upsert(Registration(id="plain-1", address="127.0.0.1:9", metrics_port=9,
                                    models=["fake-model"], lease_seconds=60))
        gw.pool.upsert(Registration(id="multi-1", address="127.0.0.1:10", metrics_port=10,
                                    models=["fake-model", "m:v1", "m:v2"],
                                    loaded=["fake-model", "m:v1"], available=["m:v2"],
                                    lease_seconds=60))
        await store.audit.append([AuditEvent("model.deploy", "m:v1", "key-ops", "ok",
                                             detail={"nodes": ["multi-1"], "replace": "m:v0"})])
        async with httpx.AsyncClient(base_url=base(gw)) as http:
            r = await http.get("/ui/models")
        assert r.status_code == 200
        rows = cells(r.text, "model")
        assert sorted(rows) == ["fake-model", "m:v1", "m:v2"]  # other-model: no node lists it
        fake = rows["fake-model"]
        assert re.search(r'class="nodes-count">2<', fake) and "(2 healthy)" in fake
        loaded = re.search(r'class="loaded-on">(.*?)</td>', fake)
        assert loaded is not None and text(loaded.group(1)) == "plain-1, multi-1"
        # Requests/s and TTFT p95 over the last hour, as the proxy saw them: the seeded
        # request log, replayed into its live statistics as a restarted proxy does.
        mine = [row for row in log if row["model"] == "fake-model"]
        assert f"{len(mine) / 3600:,.3f} <small>({len(mine)})</small>" in fake
        ok = sorted(row["ttft_ms"] for row in mine if row["status"] < 400)
        p95 = ok[math.ceil(0.95 * len(ok)) - 1]
        shown = re.search(r"<td>([\d,]+) ms</td>", fake)
        assert shown is not None  # the upper edge of p95's histogram bucket (1.5x wide)
        assert p95 <= float(shown.group(1).replace(",", "")) < 1.5 * p95 + 1
        v2 = rows["m:v2"]
        assert 'class="loaded-on">–<' in v2 and 'class="available-on">multi-1<' in v2
        v1 = text(rows["m:v1"])
        assert "m:v1 replacing m:v0 · key-ops · ok" in v1 and "Roll back" in v1
        # The deploy form offers only what is loaded somewhere as the model to replace.
        replace = re.search(r'<select name="replace"[^>]*>(.*?)</select>', r.text, re.S)
        assert replace is not None
        assert re.findall(r"<option>([^<]+)</option>", replace.group(1)) == ["fake-model",
                                                                             "m:v1"]
    finally:
        await gw.drain()


async def test_deploy_and_roll_back_from_the_models_page(tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path, auth="none")
    node = await start_versioned_node(gw, [], [])
    try:
        store = gw.security.store
        assert store is not None
        await eventually(lambda: "m:v1" in gw.pool.snapshot.models, what="the node registered")
        async with httpx.AsyncClient(base_url=base(gw), timeout=20) as http:
            r = await http.post("/ui/models/deploy", data={"model": "m:v2", "replace": "m:v1"})
            assert r.status_code == 200, r.text
            assert "Deployed <b>m:v2</b> replacing <b>m:v1</b>" in r.text
            assert [e.ref for e in node.models.loaded()] == ["m:v2"]

            async def deployed() -> list[dict[str, object]]:
                return await store.audit.find(action="model.deploy")
            [row] = await eventually(deployed, what="the deploy audited")
            assert (row["target"], row["actor"], row["outcome"]) == ("m:v2", "local", "ok")

            # The node re-registers with v2 loaded; the page offers the way back.
            await eventually(lambda: any("m:v2" in n.loaded for n in gw.pool.snapshot.nodes),
                             what="v2 reported loaded")
            page = (await http.get("/ui/models")).text
            assert "m:v2 replacing m:v1" in text(cells(page, "model")["m:v2"])
            rollback = re.search(r'<form method="post" action="/ui/models/deploy">'
                                 r'<input type="hidden" name="model" value="([^"]+)">'
                                 r'<input type="hidden" name="replace" value="([^"]+)">', page)
            assert rollback is not None and rollback.groups() == ("m:v1", "m:v2")
            r = await http.post("/ui/models/deploy",
                                data={"model": "m:v1", "replace": "m:v2"})
            assert r.status_code == 200 and [e.ref for e in node.models.loaded()] == ["m:v1"]

            r = await http.post("/ui/models/deploy", data={"model": "m:v3", "replace": "x:v0"})
            assert r.status_code == 404 and "has &#39;x:v0&#39; loaded" in r.text
            r = await http.post("/ui/models/deploy", data={"model": "", "replace": "m:v1"})
            assert "needs the new model" in r.text
    finally:
        await node.drain()
        await gw.drain()


class Env:
    def __init__(self, gw: Gateway, node: BackendNode, engine: FlakyEngine, admin: str,
                 admin_id: str, user: str) -> None:
        self.gw, self.node, self.engine = gw, node, engine
        self.admin, self.admin_id, self.user = admin, admin_id, user

    def http(self, key: str | None = None) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {key or self.admin}"}
        return httpx.AsyncClient(base_url=base(self.gw), headers=headers, timeout=20)


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    gw = await start_batch_gateway(tmp_path, batch={"workers": 1}, auth="on")
    node, engine = await start_node(gw.ops.port, token_delay=0.05, parallel=1)
    try:
        store = gw.security.store
        assert store is not None
        admin, admin_row = await create_key(store, name="ops", scope="admin")
        user, user_row = await create_key(store, name="team-a", scope="user")
        await gw.security.keys.refresh()
        await seed_batches(store, 60, owner=user_row.id)
        await until_served(gw)
        yield Env(gw, node, engine, admin, admin_row.id, user)
        await settle(gw)
    finally:
        await node.drain()
        await gw.drain()


async def settle(gw: Gateway) -> None:
    """Cancel what still runs and wait until it has ended: on Python 3.11 the batch
    runner's drain can lose its cancellation to an item finishing at that moment."""
    store = gw.security.store
    assert store is not None
    for row in await store.batches.with_status("validating", "in_progress"):
        await store.batches.update(row["id"], when=("validating", "in_progress"),
                                   status="cancelling", cancelling_at=time.time())
        await store.batch_items.close_open(row["id"], "cancelled")

    async def ended() -> bool:
        return not await store.batches.with_status("validating", "in_progress", "cancelling")
    await eventually(ended, timeout=20, what="the open batches to end")


async def running_batch(env: Env, lines: int = 40) -> str:
    """A batch created by the user key through the Batch API, working through slow lines."""
    async with env.http(env.user) as http:
        f = await http.post("/v1/files", data={"purpose": "batch"}, files={"file": (
            "in.jsonl", jsonl([completion(f"c{i}", f"slow {i}") for i in range(lines)]))})
        assert f.status_code == 200, f.text
        b = await http.post("/v1/batches", json={"input_file_id": f.json()["id"],
                                                 "endpoint": "/v1/completions",
                                                 "completion_window": "24h"})
        assert b.status_code == 200, b.text
        batch_id: str = b.json()["id"]

        async def started() -> bool:
            got = (await http.get(f"/v1/batches/{batch_id}")).json()
            return got["status"] == "in_progress" and got["request_counts"]["completed"] >= 1
        await eventually(started, timeout=20, interval=0.05, what="the batch to start")
    return batch_id


async def test_batches_page_lists_filters_and_pages_the_store_rows(env: Env) -> None:
    store = env.gw.security.store
    assert store is not None
    running = await running_batch(env)
    everything = await store.batches.find(owner=None, all_owners=True, after=None, limit=500)
    assert len(everything) == 61
    async with env.http() as http:
        seen: dict[str, str] = {}
        url = "/ui/batches"
        for _ in range(5):
            page = await http.get(url)
            assert page.status_code == 200
            seen.update(cells(page.text, "batch"))
            m = re.search(r'id="older" href="([^"]+)"', page.text)
            if m is None:
                break
            url = html.unescape(m.group(1))
        assert list(seen) == [r["id"] for r in everything]  # every row once, newest first
        for r in everything:
            shown = text(seen[r["id"]])
            if r["id"] != running:  # finished: the row's own counts
                assert (f"{r['completed']} done · {r['failed']} failed · {r['total']} total"
                        in shown), shown
            assert r["status"].replace("_", " ") in shown and "team-a" in shown
        assert "Cancel" in seen[running] and "Cancel" not in seen[everything[-1]["id"]]

        failed = await http.get("/ui/batches", params={"status": "failed"})
        want = [r["id"] for r in everything if r["status"] == "failed"]
        assert len(want) == 12 and list(cells(failed.text, "batch")) == want
        assert (await http.get("/ui/batches", params={"status": "x"})).status_code == 400
        assert (await http.get("/ui/batches", params={"after": "no'pe"})).status_code == 400

        detail = (await http.get(f"/ui/api/batches/{want[0]}")).json()
        assert detail["errors"] == [{"code": "invalid_json", "message": "line is not JSON",
                                     "line": 3}]
        assert detail["error_file_id"] == f"file-err{int(want[0][-4:])}"
        assert detail["output_file_id"] is None and detail["owner_name"] == "team-a"
        assert (await http.get("/ui/api/batches/nope")).status_code == 404

        # The live stream follows the running batch's counts.
        async with http.stream("GET", "/ui/live", params={"view": "batches",
                                                          "ids": f"{running},bad'id"}) as r:
            buf = ""
            async for chunk in r.aiter_text():
                buf += chunk
                if "event: batches" in buf and buf.endswith("\n\n"):
                    break
        [progress] = orjson.loads(re.search(r"^data: (.*)$", buf, re.M).group(1))  # type: ignore[union-attr]
        assert progress["id"] == running and progress["total"] == 40
        assert progress["completed"] >= 1 and progress["status"] == "in_progress"


async def test_admin_cancels_a_running_batch_from_the_page(env: Env) -> None:
    store = env.gw.security.store
    assert store is not None
    running = await running_batch(env)
    async with env.http() as http:
        r = await http.post(f"/ui/batches/{running}/cancel")
        assert r.status_code == 303 and r.headers["location"] == "/ui/batches"
        row = await store.batches.get(running)
        assert row is not None and row["status"] in ("cancelling", "cancelled")

        async def cancelled() -> dict[str, object] | None:
            got = await store.batches.get(running)
            return got if got is not None and got["status"] == "cancelled" else None
        done = await eventually(cancelled, timeout=20, what="the batch cancelled")
        assert done["output_file_id"] and done["error_file_id"]

        async def audited() -> list[dict[str, object]]:
            return await store.audit.find(action="batch.cancel")
        [audit] = await eventually(audited, what="the cancel audited")
        assert (audit["target"], audit["actor"], audit["outcome"]) == (
            running, env.admin_id, "ok")

        # The files it wrote download through the dashboard, as the admin.
        out = await http.get(f"/ui/files/{done['output_file_id']}/content")
        assert out.status_code == 200 and b'"custom_id"' in out.content
        # Cancelling a finished batch is refused, and the page says why.
        r = await http.post(f"/ui/batches/{running}/cancel")
        assert r.status_code == 400 and "Cannot cancel a batch with status cancelled" in r.text


async def test_user_keys_and_other_sites_cannot_act(env: Env) -> None:
    running = await running_batch(env, lines=20)
    async with env.http(env.user) as http:
        for method, path in (("POST", f"/ui/batches/{running}/cancel"),
                             ("POST", "/ui/models/deploy"), ("GET", "/ui/batches"),
                             ("GET", "/ui/models"), ("GET", f"/ui/api/batches/{running}")):
            r = await http.request(method, path, data={"model": "a:b", "replace": "fake-model"})
            assert r.status_code == 403, (method, path)
    async with env.http() as http:
        r = await http.post(f"/ui/batches/{running}/cancel",
                            headers={"origin": "https://evil.example"})
        assert r.status_code == 403
    store = env.gw.security.store
    assert store is not None
    row = await store.batches.get(running)
    assert row is not None and row["status"] == "in_progress"  # nothing was cancelled
    # An admin signed in with a session cookie acts as its key until that key is revoked.
    async with httpx.AsyncClient(base_url=base(env.gw)) as http:
        r = await http.post("/ui/login", data={"key": env.admin})
        token = r.headers["set-cookie"].split(";")[0]
        await store.keys.revoke(env.admin_id)
        await env.gw.security.keys.refresh()
        r = await http.post(f"/ui/batches/{running}/cancel", headers={"cookie": token})
        assert r.status_code == 403 and "no longer an active admin key" in r.text
    row = await store.batches.get(running)
    assert row is not None and row["status"] == "in_progress"


async def test_the_timeline_shows_the_breaker_going_half_open_then_closed(
        tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path, auth="none", eject_after_failures=1, base_ejection=0.3,
                             max_ejected_percent=100, max_attempts=1)
    node, _ = await start_node(gw.ops.port, node_id="flaky")
    try:
        await until_served(gw)
        async with httpx.AsyncClient(base_url=base(gw), timeout=10) as http:
            body = {"model": "fake-model", "max_tokens": 2}
            r = await http.post("/v1/completions", json={**body, "prompt": "ALWAYS503"})
            assert r.status_code >= 500
            flaky = gw.pool.get("flaky")
            assert flaky is not None and flaky.breaker.state == "open"  # the scenario

            async def served() -> bool:  # refused while open; the probe once it is over
                r = await http.post("/v1/completions", json={**body, "prompt": "hi"})
                return r.status_code == 200
            await eventually(served, timeout=10, interval=0.1, what="the probe to succeed")
            assert flaky.breaker.state == "closed"
            kinds = [e.kind for e in gw.events.recent() if e.node == "flaky"]
            assert kinds[-3:] == ["ejected", "breaker_half_open", "readmitted"], kinds
            page = (await http.get("/ui")).text
            assert "breaker half open" in page and "one probe request may go through" in page
    finally:
        await node.drain()
        await gw.drain()


async def test_a_restarted_proxy_rebuilds_the_overview_from_the_request_log(
        tmp_path: Path) -> None:
    gw, log = await restarted_on_a_seeded_log(tmp_path)
    try:
        points = gw.stats.series(3600)
        assert sum(p["requests"] for p in points) == len(log)
        async with httpx.AsyncClient(base_url=base(gw)) as http:
            page = (await http.get("/ui")).text
        data = re.search(r'<script type="application/json" id="page-data">(.*?)</script>',
                         page, re.S)
        assert data is not None
        series = orjson.loads(html.unescape(data.group(1)))["series"]
        assert sum(p["requests"] for p in series) == len(log)
        errors = sum(1 for r in log if r["status"] >= 400)
        assert round(sum(p["rps"] * p["error_rate"] * 10 for p in series)) == errors
        assert gw.stats.spent_today() == 0.0  # replayed rows are not spent twice
        strip = gw.stats.node_strip("node-0")
        assert sum(m["requests"] for m in strip) == sum(1 for r in log if r["node"] == "node-0")
    finally:
        await gw.drain()
