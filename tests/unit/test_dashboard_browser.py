"""The dashboard in a real browser: Playwright driving Debian's Chromium (/usr/bin/chromium,
installed by scripts/system-deps.sh; never a downloaded browser).

Every page renders from a seeded store with no console error and no request leaving
loopback, in at most three API calls; a node that dies shows as ejected on the Nodes page
within five seconds. Screenshots of each page are kept under test-artifacts/ui/.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from inferno.api.node import Registration
from inferno.backend.node import BackendNode
from inferno.proxy.gateway import Gateway
from tests.conftest import start_fake_node, start_gateway
from tests.ui_seed import batch_row, seed, seed_batches

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("INFERNO_TEST_ARTIFACTS",
                                Path(__file__).resolve().parents[2] / "test-artifacts")) / "ui"
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM) and os.environ.get("CI") != "true",
                                reason="Chromium is not installed (scripts/system-deps.sh)")


class Watch:
    """What a page did: console errors, uncaught exceptions, requests it made."""

    def __init__(self, page: Any, origin: str) -> None:
        self.errors: list[str] = []
        self.foreign: list[str] = []
        self.api: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", self._request)
        self._origin = origin

    def _request(self, req: Any) -> None:
        url = req.url
        if url.startswith("data:"):
            return
        if not url.startswith(self._origin):
            self.foreign.append(url)
        elif "/ui/static/" not in url:
            self.api.append(url)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[Gateway, list[BackendNode]]]:
    gw = await start_gateway(tmp_path, health_interval=0.2, unhealthy_after=1)
    nodes = [await start_fake_node(node_id=f"node-{i}") for i in range(2)]
    try:
        assert gw.security.store is not None
        await seed(gw.security.store, rows=200)
        await seed_batches(gw.security.store, 12)
        await gw.security.store.batches.create(batch_row(99, "in_progress"))
        for n in nodes:
            gw.pool.upsert(Registration(id=n.node_id, address=f"127.0.0.1:{n.server.port}",
                                        metrics_port=n.ops.port, models=["fake-model"],
                                        lease_seconds=60))
        yield gw, nodes
    finally:
        for n in nodes:
            await n.drain()  # a no-op for one already drained
        await gw.drain()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            await b.close()


async def test_every_page_renders_without_errors_or_foreign_requests(
        cluster: tuple[Gateway, list[BackendNode]], browser: Any) -> None:
    gw, _ = cluster
    origin = f"http://127.0.0.1:{gw.server.port}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    checks = {"overview": ("/ui", "#chart-rps .u-over"),
              "nodes": ("/ui/nodes", 'tr[data-node="node-0"]'),
              "autoscaler": ("/ui/autoscaler", ".pool-chart .u-over"),
              "requests": ("/ui/requests", "tr[data-id]"),
              "usage": ("/ui/usage", "#keys"),
              "models": ("/ui/models", 'tr[data-model="fake-model"]'),
              "batches": ("/ui/batches", "tr[data-batch]")}
    for name, (path, ready) in checks.items():
        page = await context.new_page()
        watch = Watch(page, origin)
        await page.goto(origin + path, wait_until="load")
        await page.wait_for_selector(ready, timeout=5000)
        if name in ("overview", "nodes", "batches"):
            await page.wait_for_selector("#live.on", timeout=5000)  # the live stream is up
        if name == "requests":
            await page.click("tr[data-id] >> nth=0")
            await page.wait_for_selector("#detail:not([hidden])", timeout=5000)
            assert '"request_id"' in await page.inner_text("#detail-body")
        if name == "batches":  # a failed batch's details: its errors and its error file
            await page.click('tr[data-batch="batch_seed0003"] td >> nth=0')
            await page.wait_for_selector("#detail:not([hidden])", timeout=5000)
            assert "invalid_json" in await page.inner_text("#detail-errors")
            links = await page.eval_on_selector_all("#detail-files a",
                                                    "els => els.map(a => a.pathname)")
            assert links == ["/ui/files/file-in3/content", "/ui/files/file-err3/content"]
        await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 10_000
        assert not watch.errors, (name, watch.errors)
        assert not watch.foreign, (name, watch.foreign)
        assert 1 <= len(watch.api) <= 3, (name, watch.api)
        await page.close()
    await context.close()


async def test_a_dead_node_shows_ejected_on_the_nodes_page_within_5s(
        cluster: tuple[Gateway, list[BackendNode]], browser: Any) -> None:
    gw, nodes = cluster
    page = await browser.new_page()
    watch = Watch(page, f"http://127.0.0.1:{gw.server.port}")
    await page.goto(f"http://127.0.0.1:{gw.server.port}/ui/nodes")
    badge = 'tr[data-node="node-1"] .badge'
    assert await page.inner_text(badge) == "healthy"  # the scenario starts healthy
    await page.wait_for_selector("#live.on", timeout=5000)
    killed = time.monotonic()
    await nodes[1].drain()  # its ports close: health checks fail from now on
    from playwright.async_api import expect

    await expect(page.locator(badge)).to_have_text("ejected", timeout=5000)
    assert time.monotonic() - killed < 5.0
    assert await page.inner_text('tr[data-node="node-0"] .badge') == "healthy"
    await page.screenshot(path=str(ARTIFACTS / "nodes-ejected.png"), full_page=True)
    assert not watch.errors, watch.errors
