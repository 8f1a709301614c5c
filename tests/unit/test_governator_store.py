"""The governator's stores: in memory, and the shared store on SQLite and on the local
PostgreSQL (each test in its own schema), the background writer through a database
outage, the loop and ``inferno governator status`` on stored data."""

from __future__ import annotations

import asyncio
import contextlib
import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from rich.console import Console
from sqlalchemy.engine import make_url

from inferno.core.config import GovernatorSettings
from inferno.core.errors import ConfigError
from inferno.governator.loop import Governator
from inferno.governator.policy import Decision
from inferno.governator.render import fetch_state, print_state
from inferno.governator.signals import Endpoint
from inferno.governator.store import GovernatorStore, MemoryStore, SqlStore, open_store
from inferno.governator.wiring import load_policy_and_prices
from inferno.net import HttpClient
from inferno.proxy.gateway import Gateway
from inferno.store import Store
from tests.conftest import require_postgres
from tests.polling import eventually

SQL = [pytest.param("sqlite", id="sqlite"), pytest.param("postgresql", id="postgresql")]
ALL = [pytest.param("memory", id="memory"), *SQL]


def _shared(kind: str, tmp_path: Path, url: str | None = None) -> Store:
    if kind == "sqlite":
        return Store(f"sqlite:///{tmp_path / 'inferno.db'}")
    return Store(url or require_postgres(), schema=f"t_{uuid.uuid4().hex[:12]}")


async def _open(kind: str, tmp_path: Path, **kw: float) -> GovernatorStore:
    if kind == "memory":
        return MemoryStore(raw_retention_s=kw.get("raw", 120), rollup_retention_s=600)
    store = SqlStore(_shared(kind, tmp_path), raw_retention_s=kw.get("raw", 120),
                     rollup_retention_s=600, flush_interval=0.05)
    await store.start()
    return store


@pytest_asyncio.fixture
async def gov_store(request: pytest.FixtureRequest,
                    tmp_path: Path) -> AsyncIterator[GovernatorStore]:
    store = await _open(request.param, tmp_path)
    yield store
    await store.close()
    if isinstance(store, SqlStore):
        await store.store.drop_schema()
        await store.store.close()


def _decision(i: int, action: str = "up") -> Decision:
    return Decision(pool="m", at=float(i), current=1, desired=2, action=action,  # type: ignore[arg-type]
                    reason=f"because {i}", node_type="cpu", signals={"queued": i})


@pytest.mark.parametrize("gov_store", ALL, indirect=True)
async def test_store_keeps_decisions_and_rolls_up_samples(gov_store: GovernatorStore) -> None:
    store = gov_store
    for t in range(0, 300, 10):
        await store.add_sample(float(t), "m", {"queued": t, "ready": 1, "ttft_p95_s": None})
    did = await store.add_decision(_decision(1))
    await store.add_decision(_decision(2, "hold"))
    await store.set_outcome(did, "ok: started node-1")
    await store.compact(300.0)
    assert await store.flush()
    assert next(s["at"] for s in await store.samples("m", 0)) == 180.0
    rolled = await store.rollups("m", 0)
    assert [r["minute"] for r in rolled] == [0.0, 60.0, 120.0]
    assert rolled[0]["queued"] == {"mean": 25.0, "max": 50.0} and rolled[0]["n"] == 6
    assert rolled[0]["ttft_p95_s"] is None
    await store.compact(700.0)  # roll-ups past their retention (600 s) are pruned
    assert await store.flush()
    assert [r["minute"] for r in await store.rollups("m", 0)] == [120.0, 180.0, 240.0]
    decisions = await store.decisions(10)
    assert [d["action"] for d in decisions] == ["hold", "up"]
    assert decisions[1]["outcome"] == "ok: started node-1"
    assert decisions[1]["signals"] == {"queued": 1}
    assert decisions[1]["reason"] == "because 1"


@pytest.mark.parametrize("kind", SQL)
async def test_stored_rows_survive_a_restart_and_keep_their_order(kind: str,
                                                                 tmp_path: Path) -> None:
    shared = _shared(kind, tmp_path)
    first = SqlStore(shared)
    await first.start()
    await first.add_sample(100.0, "m", {"queued": 3, "colour": "red", "queue_wait_p95_s": 0.5})
    ids = [await first.add_decision(_decision(i)) for i in range(3)]
    await first.close()  # flushes what is queued
    again = Store(shared.url, schema=shared.schema)
    second = SqlStore(again)
    await second.start()
    try:
        newer = await second.add_decision(_decision(9, "down"))
        assert newer > max(ids) and ids == sorted(ids)  # time-ordered, above stored ids
        assert [d["id"] for d in await second.decisions(3)] == [newer, ids[2], ids[1]]
        (sample,) = await second.samples("m", 0)
        # Signals with a column round-trip through it; others through ``extra``.
        assert sample == {"pool": "m", "at": 100.0, "queued": 3, "colour": "red",
                          "queue_wait_p95_s": 0.5}
    finally:
        await second.close()
        await again.drop_schema()
        await again.close()


@pytest.mark.parametrize("kind", SQL)
async def test_retried_batches_and_late_samples_are_not_doubled(kind: str,
                                                               tmp_path: Path) -> None:
    from inferno.store.governator import sample_row

    store = _shared(kind, tmp_path)
    await store.start()
    repo = store.governator
    try:
        rows = [sample_row(float(t), "m", {"queued": 2, "errors": 0}) for t in range(0, 60, 10)]
        row = {"id": 7, **_decision(1).to_dict(), "signals": {"x": float("inf")}}
        await repo.write(rows, [row], [(7, "ok")])
        await repo.write(rows, [row], [(7, "ok: again")])  # an ambiguous failure, retried
        assert len(await repo.samples("m", 0)) == 6
        (stored,) = await repo.decisions(10)
        assert stored["outcome"] == "ok: again" and stored["signals"] == {"x": None}
        assert await repo.compact(60.0, 0.0) == 6
        await repo.write([sample_row(30.0, "m", {"queued": 8})])  # late, minute 0 again
        assert await repo.compact(60.0, 0.0) == 1
        (minute,) = await repo.rollups("m", 0)
        assert minute["n"] == 7 and minute["queued"]["max"] == 8.0
        assert minute["queued"]["mean"] == pytest.approx((6 * 2 + 8) / 7)
        assert await repo.samples("m", 0) == []
    finally:
        await store.drop_schema()
        await store.close()


class FlakyForwarder:
    """A TCP forwarder to PostgreSQL on a loopback port: ``mode`` "up" forwards, "down"
    refuses (closes at once), "hang" accepts and never answers."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.mode = "up"
        self.port = 0
        self._server: asyncio.Server | None = None
        self._closed = asyncio.Event()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode != "up":
            if self.mode == "hang":
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), 30)
            writer.close()
            return
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.close()
        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    async def close(self) -> None:
        assert self._server is not None
        self._closed.set()
        self._server.close()


async def test_writes_survive_a_database_outage_without_blocking(tmp_path: Path,
                                                                 postgres: str) -> None:
    pg = make_url(postgres)
    fwd = FlakyForwarder(pg.port or 5432)
    await fwd.start()
    shared = _shared("postgresql", tmp_path,
                     pg.set(port=fwd.port).render_as_string(hide_password=False))
    store = SqlStore(shared, flush_interval=0.05, queue_size=50, timeout=1.0)
    await store.start()
    try:
        fwd.mode = "down"
        await store.store.engine.dispose()  # drop pooled connections: the outage is real
        for t in range(60):  # never waits on the database, never raises
            await asyncio.wait_for(store.add_sample(float(t), "m", {"queued": t}), 1.0)
        did = await store.add_decision(_decision(1))
        await store.set_outcome(did, "ok")
        await eventually(lambda: store.stats()["write_errors"] >= 1, timeout=3.0,
                         what="the writer to hit the outage")
        assert store.stats()["dropped"] == 10  # bounded queue
        # Status still answers, from the decisions not yet written.
        assert [d["outcome"] for d in await store.decisions(5)] == ["ok"]
        fwd.mode = "hang"
        await asyncio.wait_for(store.add_decision(_decision(2, "hold")), 1.0)
        fwd.mode = "up"
        assert await store.flush(within=10.0)  # back: the backlog is written, once
        assert len(await store.samples("m", 0)) == 50
        assert [d["action"] for d in await store.store.governator.decisions(5)] == ["hold", "up"]
    finally:
        await store.close()
        await shared.drop_schema()
        await shared.close()
        await fwd.close()


async def test_rows_the_database_refuses_are_dropped_not_retried_forever(
        tmp_path: Path, postgres: str) -> None:
    shared = _shared("postgresql", tmp_path)
    store = SqlStore(shared, flush_interval=3600)
    await store.start()
    try:
        bad = _decision(1)
        bad.action = "x" * 40  # type: ignore[assignment]  # longer than the column allows
        await store.add_decision(bad)
        await store.add_sample(1.0, "m", {"queued": 1})
        assert await store.flush(within=10.0)  # refused 5 times, then dropped
        # Only the refused decision: samples have their own writer, the sample is stored.
        assert store.stats()["dropped"] == 1 and store.stats()["write_errors"] == 5
        assert len(await store.samples("m", 0)) == 1
        await store.add_decision(_decision(2))  # the writer is not stuck on it
        assert await store.flush(within=10.0)
        assert [d["reason"] for d in await shared.governator.decisions(5)] == ["because 2"]
    finally:
        await store.close()
        await shared.drop_schema()
        await shared.close()


class OneNodeProvider:
    def __init__(self) -> None:
        self.count = 0

    async def start(self) -> None: ...

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(f"n{i}", "m", "127.0.0.1", 1, "starting") for i in range(self.count)]

    async def reconcile(self, now: float) -> list[str]:
        return []

    async def scale(self, pool: str, desired: int) -> str:
        self.count = desired
        return f"now {desired}"

    async def close(self) -> None: ...


@pytest.mark.parametrize("kind", SQL)
async def test_loop_stores_everything_and_status_shows_it(kind: str, tmp_path: Path,
                                                          gateway: Gateway) -> None:
    policy, prices = load_policy_and_prices(GovernatorSettings(min_replicas=1))
    shared = _shared(kind, tmp_path)
    gov = Governator(policy, prices, OneNodeProvider(), SqlStore(shared, flush_interval=0.05),
                     HttpClient(), proxy_host="127.0.0.1", proxy_port=gateway.ops.port,
                     interval=0.05)
    port = await gov.start_ops("127.0.0.1", 0)
    await gov.start()
    try:
        await eventually(lambda: len(gov.store_decisions) >= 3, what="3 governator decisions")
        state = await asyncio.to_thread(fetch_state, "127.0.0.1", port)
        assert state is not None and state["store"]["write_errors"] == 0
        assert state["decisions"][-1]["action"] == "up"
        out = io.StringIO()
        print_state(state, Console(file=out, width=200))
        assert "min_replicas 1" in out.getvalue() and "ok: now 1" in out.getvalue()
    finally:
        await gov.drain()  # flushes the store
    reopened = Store(shared.url, schema=shared.schema)
    try:
        await reopened.start()
        stored = await reopened.governator.decisions(1000)
        assert len(stored) >= 3 and stored[-1]["outcome"] == "ok: now 1"
        assert len(await reopened.governator.samples("smollm2-135m", 0)) >= 3
    finally:
        await reopened.drop_schema()
        await reopened.close()


@pytest.mark.parametrize(("url", "expected"), [
    pytest.param("memory", "MemoryStore", id="memory"),
    pytest.param(None, "sqlite+aiosqlite:///", id="default-sqlite-in-data-dir"),
    pytest.param("sqlite:///x.db", "sqlite+aiosqlite:///x.db", id="sqlite"),
    pytest.param("postgresql://u:secret@db/x", "postgresql+asyncpg://u:***@db/x", id="postgres"),
])
def test_open_store_picks_by_url(url: str | None, expected: str, tmp_path: Path) -> None:
    store = open_store(url, data_dir=tmp_path)
    assert expected in (type(store).__name__ if url == "memory" else repr(store))
    if url is None:
        assert str(tmp_path / "inferno.db") in repr(store)


def test_open_store_refuses_unknown_urls_without_echoing_them() -> None:
    with pytest.raises(ConfigError) as err:
        open_store("mysql://user:secret@db/x")
    assert "mysql://" in err.value.message and "secret" not in err.value.message


@pytest.mark.parametrize(("env", "expected"), [
    pytest.param({}, None, id="unset"),
    pytest.param({"INFERNO_DATABASE_URL": "postgresql://a/b"}, "postgresql://a/b",
                 id="unprefixed"),
    pytest.param({"INFERNO_DATABASE_URL": "postgresql://a/b",
                  "INFERNO_GOVERNATOR_DATABASE_URL": "sqlite:///g.db"}, "sqlite:///g.db",
                 id="prefixed-wins"),
])
def test_database_url_falls_back_to_the_shared_variable(
        env: dict[str, str], expected: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("INFERNO_DATABASE_URL", "INFERNO_GOVERNATOR_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    url = GovernatorSettings().database_url
    assert (url.get_secret_value() if url else None) == expected
