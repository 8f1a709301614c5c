"""The request log: exactly one row per request, whatever happened, and through outages."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import pytest_asyncio
from sqlalchemy.engine import make_url

from inferno.api.node import Registration
from inferno.backend.node import BackendNode
from inferno.proxy.accounting import new_request_id, new_row
from inferno.proxy.gateway import Gateway
from inferno.proxy.security.keys import create_key
from inferno.store import Store
from tests.conftest import free_port, start_fake_node, start_gateway
from tests.polling import eventually

MSG = [{"role": "user", "content": "hello"}]


class Relay:
    """A TCP relay to a real server that a test can cut and restore (a database outage)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)

    async def down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers |= {writer, up_writer}

        async def copy(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                w.transport.abort()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))


async def wait_rows(store: Store, n: int, within: float = 15.0) -> int:
    """Wait until the log holds at least ``n`` rows; the count (a test asserts it is n)."""

    async def count() -> int:
        c = await store.requests.count()
        return c if c >= n else 0

    return await eventually(count, timeout=within, interval=0.05, what=f"{n} request rows")


@pytest_asyncio.fixture
async def node() -> AsyncIterator[BackendNode]:
    n = await start_fake_node(n_ctx=2048)
    yield n
    await n.drain()


def attach(gw: Gateway, node: BackendNode) -> None:
    gw.pool.upsert(Registration(id="n", address=f"127.0.0.1:{node.server.port}",
                                metrics_port=6100, models=["fake-model"], lease_seconds=60))


async def test_every_outcome_leaves_exactly_one_row(tmp_path: Path, node: BackendNode) -> None:
    gw = await start_gateway(tmp_path, auth="on", prices={"fake-model": {"prompt": 1.0,
                                                                        "completion": 2.0}})
    slow = await start_fake_node(token_delay=0.05, node_id="slow", model="slow-model")
    try:
        attach(gw, node)
        gw.pool.upsert(Registration(id="slow", address=f"127.0.0.1:{slow.server.port}",
                                    metrics_port=6100, models=["slow-model"], lease_seconds=60))
        gw.pool.upsert(Registration(id="dead", address=f"127.0.0.1:{free_port()}",
                                    metrics_port=6100, models=["dead-model"], lease_seconds=60))
        store = gw.security.store
        assert store is not None
        key, row = await create_key(store, name="k", rpm=6000)
        tight, _ = await create_key(store, name="tight", rpm=60)
        await gw.security.keys.refresh()
        url = f"http://127.0.0.1:{gw.server.port}"
        auth = {"authorization": f"Bearer {key}"}
        chat = {"model": "fake-model", "messages": MSG, "max_tokens": 4}
        async with httpx.AsyncClient() as http:
            ok = await http.post(f"{url}/v1/chat/completions", json=chat, headers=auth)
            streamed = await http.post(f"{url}/v1/chat/completions", headers=auth,
                                       json={**chat, "stream": True})
            outcomes = [
                ok.status_code, streamed.status_code,
                (await http.post(f"{url}/v1/completions", content=b"{bad",
                                 headers=auth)).status_code,
                (await http.post(f"{url}/v1/completions", json={"model": "x"})).status_code,
                (await http.post(f"{url}/v1/completions", headers=auth,
                                 json={"model": "nope", "prompt": "x"})).status_code,
                (await http.post(f"{url}/v1/completions", headers=auth,
                                 json={"model": "dead-model", "prompt": "x"})).status_code,
            ]
            # A client that goes away mid-stream.
            body = {"model": "slow-model", "prompt": "x", "max_tokens": 100, "stream": True}
            async with http.stream("POST", f"{url}/v1/completions", json=body,
                                   headers=auth) as r:
                async for _ in r.aiter_raw():
                    break
            for _ in range(3):  # a burst of 2, then 429
                outcomes.append((await http.post(
                    f"{url}/v1/completions", json={"model": "fake-model", "prompt": "x"},
                    headers={"authorization": f"Bearer {tight}"})).status_code)
        assert outcomes == [200, 200, 400, 401, 404, 503, 200, 200, 429]
        assert "usage" not in streamed.text  # the proxy asked for it, the client did not
        assert ok.headers["x-request-id"]
        await wait_rows(store, 10, within=5.0)
        await asyncio.sleep(0.2)  # a grace period: a doubled (11th) row would show up here
        rows = await store.requests.recent(limit=100)
        assert len(rows) == 10
        by_id = {r["request_id"]: r for r in rows}
        first = by_id[ok.headers["x-request-id"]]
        assert first["key_id"] == row.id and first["node"] == "n" and first["attempts"] == 1
        assert first["completion_tokens"] == 4 and first["prompt_tokens"] > 0
        assert first["cost"] == pytest.approx((first["prompt_tokens"] + 8) / 1e6)
        assert first["request_body"] is None and first["response_body"] is None
        stream_row = by_id[streamed.headers["x-request-id"]]
        assert stream_row["stream"] and stream_row["completion_tokens"] == 4
        assert stream_row["ttft_ms"] is not None and stream_row["status"] == 200
        assert sorted(r["status"] for r in rows) == [200, 200, 200, 200, 400, 401, 404, 429,
                                                     499, 503]
        assert next(r for r in rows if r["status"] == 401)["key_id"] is None
    finally:
        await slow.drain()
        await gw.drain()


async def test_payloads_are_logged_only_when_enabled(tmp_path: Path, node: BackendNode) -> None:
    gw = await start_gateway(tmp_path, log_payloads=True)
    try:
        attach(gw, node)
        async with httpx.AsyncClient() as http:
            r = await http.post(f"http://127.0.0.1:{gw.server.port}/v1/chat/completions",
                                json={"model": "fake-model", "messages": MSG, "max_tokens": 2})
        assert r.status_code == 200
        assert gw.security.store is not None
        assert await wait_rows(gw.security.store, 1) == 1
        row = (await gw.security.store.requests.recent())[0]
        assert "hello" in row["request_body"] and row["response_body"] == r.text
    finally:
        await gw.drain()


async def _drive(gw: Gateway, n: int) -> list[int]:
    url = f"http://127.0.0.1:{gw.server.port}/v1/completions"
    async with httpx.AsyncClient() as http:
        codes = []
        for _ in range(n):
            r = await http.post(url, json={"model": "fake-model", "prompt": "x", "max_tokens": 1})
            codes.append(r.status_code)
            await asyncio.sleep(0.02)  # pacing: traffic spread over time
        return codes


async def test_sqlite_locked_for_a_while_loses_nothing(tmp_path: Path, node: BackendNode) -> None:
    gw = await start_gateway(tmp_path)
    try:
        attach(gw, node)
        blocker = sqlite3.connect(tmp_path / "inferno.db", timeout=0.1, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # nobody else may write (nor read) meanwhile
        try:
            codes = await _drive(gw, 60)
            assert codes == [200] * 60  # the request path never waits on the database
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert gw.security.store is not None
        assert await wait_rows(gw.security.store, 60) == 60
        await asyncio.sleep(0.3)  # a grace period: a row written twice would show up here
        assert await gw.security.store.requests.count() == 60
    finally:
        await gw.drain()


async def test_postgres_outage_is_survived_and_backlog_flushed(tmp_path: Path, node: BackendNode,
                                                               postgres: str) -> None:
    pg = make_url(postgres)
    relay = Relay((pg.host or "127.0.0.1", pg.port or 5432))
    await relay.up()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    url = pg.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
    gw = await start_gateway(tmp_path, database_url=url, database_schema=schema)
    try:
        attach(gw, node)
        store = gw.security.store
        assert store is not None
        assert await _drive(gw, 20) == [200] * 20
        assert await wait_rows(store, 20) == 20
        await relay.down()
        codes = await _drive(gw, 60)  # ~2 s of traffic with the database unreachable
        assert codes == [200] * 60
        assert gw.security.log.backlog > 0
        await relay.up()
        assert await wait_rows(store, 80, within=20) == 80
        await asyncio.sleep(0.3)  # a grace period: a row written twice would show up here
        assert await store.requests.count() == 80
        text = (await httpx.AsyncClient().get(
            f"http://127.0.0.1:{gw.ops.port}/metrics")).text
        assert "inferno_proxy_log_write_errors_total" in text
    finally:
        await gw.drain()
        cleanup = Store(postgres, schema=schema)
        await cleanup.drop_schema()
        await cleanup.close()


async def test_full_queue_drops_and_counts(tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path, log_queue_size=3)
    try:
        log = gw.security.log
        rows: list[dict[str, Any]] = [{"request_id": str(i)} for i in range(5)]
        task = next(t for t in gw.security._tasks if "run" in repr(t.get_coro()))
        task.cancel()  # no writer: the queue only fills
        await asyncio.gather(task, return_exceptions=True)
        for row in rows:
            log.record(row)
        assert log.backlog == 3
        text = (await httpx.AsyncClient().get(f"http://127.0.0.1:{gw.ops.port}/metrics")).text
        assert "inferno_proxy_log_rows_dropped_total 2.0" in text
        log._writer._queue.clear()
    finally:
        await gw.drain()


async def test_flush_beside_the_running_writer_stores_each_row_once(tmp_path: Path) -> None:
    # flush() (shutdown, tests) and the background writer used to write the same peeked
    # batch at once and then both pop it: rows lost from the queue, or an IndexError.
    gw = await start_gateway(tmp_path)
    try:
        log = gw.security.log
        store = gw.security.store
        assert store is not None
        before = await store.requests.count()
        for i in range(1_700):
            log.record(new_row(f"f-{i}", 0.0, "/v1/completions"))
        assert all(await asyncio.gather(log.flush(), log.flush(), log.flush()))
        assert log.backlog == 0
        assert await store.requests.count() - before == 1_700
    finally:
        await gw.drain()


def test_request_ids_are_unique_hex_time_ordered_and_differ_across_fork() -> None:
    ids = {new_request_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(len(i) == 24 and int(i, 16) >= 0 for i in ids)
    # Time first, so the log's index grows at its end: a later ms sorts after.
    early, late = new_request_id(1_795_651_199.0), new_request_id(1_795_651_199.5)
    assert early < late and early[:11] == f"{1_795_651_199_000:011x}"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: the generator was reseeded at fork, so its next id is its own
        try:
            os.write(write, new_request_id().encode())
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert child != new_request_id() and len(child) == 24
