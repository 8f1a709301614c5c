"""The admin routes on the API port, over HTTP against an in-process proxy."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2 as httpx
import pytest
import pytest_asyncio

from inferno.proxy.accounting import new_row
from inferno.proxy.gateway import Gateway
from inferno.store import Store
from tests.conftest import postgres_url, start_gateway

PG = postgres_url()
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param(
        "postgresql",
        id="postgresql",
        marks=pytest.mark.skipif(
            PG is None, reason="no PostgreSQL server answers on 127.0.0.1:5432 (database test)"
        ),
    ),
]


@pytest_asyncio.fixture(params=BACKENDS)
async def gw(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Gateway]:
    schema = None
    if request.param == "sqlite":
        g = await start_gateway(tmp_path)
    else:
        assert PG is not None
        schema = f"t_{uuid.uuid4().hex[:12]}"
        g = await start_gateway(tmp_path, database_url=PG, database_schema=schema)
    yield g
    await g.drain()
    if schema is not None:
        assert PG is not None
        cleanup = Store(PG, schema=schema)
        await cleanup.drop_schema()
        await cleanup.close()


async def test_request_log_lists_over_http_once_it_has_rows(gw: Gateway) -> None:
    store = gw.security.store
    assert store is not None
    now = time.time()
    rows = []
    for i in range(3):
        row = new_row(f"req-{i}", now + i, "/v1/chat/completions")
        row.update(key_id="k1", model="m", status=200, prompt_tokens=3, completion_tokens=2)
        rows.append(row)
    await store.requests.insert_many(rows)
    assert await store.requests.count() == 3  # the scenario: the log has rows

    # The store hands out plain str keys (orjson refuses SQLAlchemy's quoted_name).
    recent = await store.requests.recent(limit=10)
    assert recent and all(type(k) is str for r in recent for k in r)

    async with httpx.AsyncClient() as http:
        r = await http.get(f"http://127.0.0.1:{gw.server.port}/v1/requests?limit=10")
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["request_id"] for d in data] == ["req-2", "req-1", "req-0"]
    assert data[0]["model"] == "m" and data[0]["day"]
