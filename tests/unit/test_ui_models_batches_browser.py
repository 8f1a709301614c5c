"""The Models and Batches pages in a real browser (Debian's Chromium, as in
test_dashboard_browser): an admin signs in on the login form, cancels a running batch from
the Batches page and watches it reach cancelled on the live stream; the Models page shows
the model the fake node serves."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.polling import eventually
from tests.unit.test_dashboard_browser import ARTIFACTS, CHROMIUM, Watch, browser
from tests.unit.test_ui_models_batches import Env, env, running_batch

__all__ = ["browser", "env"]  # fixtures, used by name
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM) and os.environ.get("CI") != "true",
                                reason="Chromium is not installed (scripts/system-deps.sh)")


async def test_cancel_a_running_batch_from_the_page(env: Env, browser: Any) -> None:
    from playwright.async_api import expect

    store = env.gw.security.store
    assert store is not None
    batch_id = await running_batch(env)
    origin = f"http://127.0.0.1:{env.gw.server.port}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = await browser.new_page(viewport={"width": 1400, "height": 900})
    watch = Watch(page, origin)
    await page.goto(origin + "/ui/batches")
    assert page.url.endswith("/ui/login")  # not signed in yet
    await page.fill('input[name="key"]', env.admin)
    await page.click("button")
    await page.wait_for_url(origin + "/ui")
    await page.goto(origin + "/ui/batches")
    row = f'tr[data-batch="{batch_id}"]'
    assert await page.inner_text(f"{row} .status") == "in progress"  # the scenario: running
    await page.wait_for_selector("#live.on", timeout=5000)

    await page.click(f"{row} .action button")
    await page.wait_for_url(origin + "/ui/batches")
    await expect(page.locator(f"{row} .status")).to_have_text("cancelled", timeout=20_000)
    row_ = await store.batches.get(batch_id)
    assert row_ is not None and row_["status"] == "cancelled"
    assert await page.locator(f"{row} .action button").count() == 0
    await page.screenshot(path=str(ARTIFACTS / "batches-cancelled.png"), full_page=True)

    async def audited() -> list[dict[str, Any]]:
        return await store.audit.find(action="batch.cancel")
    [audit] = await eventually(audited, what="the cancel audited")
    assert audit["actor"] == env.admin_id and audit["target"] == batch_id

    await page.goto(origin + "/ui/models")
    loaded = await page.inner_text('tr[data-model="fake-model"] .loaded-on')
    assert loaded == env.node.node_id
    assert not watch.errors, watch.errors
    assert not watch.foreign, watch.foreign
    await page.close()
