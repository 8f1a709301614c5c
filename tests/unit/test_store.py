"""The store against both engines: SQLite (file, WAL) and the local PostgreSQL server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

import inferno.store.governator  # noqa: F401  (its tables join the metadata)
from inferno.core.errors import ConfigError
from inferno.proxy.accounting import new_row
from inferno.proxy.security.keys import KeyCache, create_key, hash_key
from inferno.store import Store, normalise_url
from inferno.store.engine import _MIGRATIONS
from inferno.store.models import metadata
from inferno.store.repos import _SQLITE_ROWS, _ladder
from tests.conftest import require_postgres

BACKENDS = [pytest.param("sqlite", id="sqlite"), pytest.param("postgresql", id="postgresql")]


async def open_store(kind: str, tmp_path: Path) -> Store:
    if kind == "sqlite":
        store = Store(f"sqlite:///{tmp_path / 'inferno.db'}")
    else:
        store = Store(require_postgres(), schema=f"t_{uuid.uuid4().hex[:12]}")
    await store.start()
    return store


@pytest_asyncio.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(request.param, tmp_path)
    yield s
    await s.drop_schema()
    await s.close()


def _schema_of(conn: Connection, schema: str | None) -> dict[str, Any]:
    """Everything the migrations decide, per table: columns, keys, indexes, constraints."""
    insp = inspect(conn)
    out: dict[str, Any] = {}
    for table in sorted(insp.get_table_names(schema=schema)):
        out[table] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], c.get("default"))
                for c in insp.get_columns(table, schema=schema)
            ],
            "pk": insp.get_pk_constraint(table, schema=schema)["constrained_columns"],
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                for i in insp.get_indexes(table, schema=schema)
            ),
            "unique": sorted(
                (u["name"] or "", tuple(u["column_names"]))
                for u in insp.get_unique_constraints(table, schema=schema)
            ),
            "fks": sorted(str(fk) for fk in insp.get_foreign_keys(table, schema=schema)),
        }
    return out


async def _snapshot(store: Store) -> tuple[dict[str, Any], list[str]]:
    """The schema (via SQLAlchemy inspect) and the Alembic version rows of ``store``."""
    schema = store.schema if store.dialect == "postgresql" else None
    async with store.engine.connect() as conn:
        tables = await conn.run_sync(_schema_of, schema)
        versions = [
            r[0] for r in await conn.execute(text("SELECT version_num FROM alembic_version"))
        ]
    return tables, versions


async def test_migrations_are_idempotent(store: Store) -> None:
    once = await _snapshot(store)
    tables, versions = once
    # What one run created: every table of the models, with its indexes, at the head revision.
    assert set(tables) == {*metadata.tables, "alembic_version"}
    assert versions == [ScriptDirectory(str(_MIGRATIONS)).get_current_head()]
    log = tables["inferno_request_log"]
    assert log["pk"] == ["request_id"]
    assert {i[0] for i in log["indexes"]} >= {
        "ix_inferno_request_log_usage",
        "ix_inferno_request_log_ts",
    }
    assert [c[0] for c in log["columns"]] == [
        c.name for c in metadata.tables["inferno_request_log"].c
    ]
    assert {"ix_inferno_gov_decisions_pool_at"} <= {
        i[0] for i in tables["inferno_gov_decisions"]["indexes"]
    }
    # Data written before a second run survives it.
    await store.requests.insert_many([new_row("kept", time.time(), "/v1/x")])
    await store.start()  # a second start (another replica) changes nothing
    assert await _snapshot(store) == once
    assert [r["request_id"] for r in await store.requests.recent()] == ["kept"]


async def test_sqlite_uses_wal(tmp_path: Path) -> None:
    store = await open_store("sqlite", tmp_path)
    try:
        async with store.engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
    finally:
        await store.close()


async def test_postgresql_tables_live_in_the_store_schema(tmp_path: Path) -> None:
    store = await open_store("postgresql", tmp_path)
    try:
        assert store.dialect == "postgresql" and store.schema
        await store.requests.insert_many(
            [new_row(f"pg-{i}", time.time(), "/v1/x") for i in range(3)]
        )
        async with store.engine.connect() as conn:
            where = (
                (
                    await conn.execute(
                        text(
                            "SELECT table_name FROM information_schema.tables "
                            "WHERE table_schema = :s"
                        ),
                        {"s": store.schema},
                    )
                )
                .scalars()
                .all()
            )
            assert set(where) == {*metadata.tables, "alembic_version"}
            # Rows land in this schema's table, read back with a schema-qualified query.
            ids = (
                (
                    await conn.execute(
                        text(
                            f'SELECT request_id FROM "{store.schema}".inferno_request_log '
                            "ORDER BY request_id"
                        )
                    )
                )
                .scalars()
                .all()
            )
            assert ids == ["pg-0", "pg-1", "pg-2"]
            types: dict[str, str] = dict(
                (
                    await conn.execute(
                        text(
                            "SELECT column_name, data_type FROM information_schema.columns "
                            "WHERE table_schema = :s AND table_name = 'inferno_request_log'"
                        ),
                        {"s": store.schema},
                    )
                ).all()
            )
            assert types["prompt_tokens"] == "bigint" and types["stream"] == "boolean"
    finally:
        await store.drop_schema()
        await store.close()


async def test_keys_are_stored_hashed_listed_and_revoked(store: Store) -> None:
    key, row = await create_key(store, name="ci", scope="user", models=["m"], rpm=10)
    rows = await store.keys.list()
    assert [r.id for r in rows] == [row.id]
    assert rows[0].key_hash == hash_key(key) and key not in repr(rows)
    cache = KeyCache(store)
    await cache.refresh()
    principal = cache.verify(key)
    assert principal is not None and principal.rpm == 10 and principal.models == {"m"}
    assert await store.keys.revoke(row.id)
    assert not await store.keys.revoke(row.id)  # already revoked
    await cache.refresh()
    assert cache.verify(key) is None


async def test_request_rows_are_never_doubled_and_usage_sums(store: Store) -> None:
    now = time.time()
    rows = []
    for i in range(5):
        row = new_row(f"req-{i}", now, "/v1/chat/completions")
        row.update(
            key_id="k1" if i < 3 else "k2",
            model="m",
            status=200 if i else 429,
            prompt_tokens=10,
            completion_tokens=5,
            cost=0.5,
        )
        rows.append(row)
    await store.requests.insert_many(rows)
    await store.requests.insert_many(rows[:2])  # a retried batch
    assert await store.requests.count() == 5
    usage = {u.key_id: u for u in await store.requests.usage()}
    assert usage["k1"].requests == 3 and usage["k1"].errors == 1
    assert usage["k1"].prompt_tokens == 30 and usage["k1"].cost == pytest.approx(1.5)
    mine = await store.requests.usage(key_id="k2")
    assert [u.key_id for u in mine] == ["k2"]
    assert len(await store.requests.recent(key_id="k2")) == 2


@pytest.mark.parametrize(
    ("n", "sizes"),
    [
        pytest.param(0, [], id="empty"),
        pytest.param(1, [1], id="one"),
        pytest.param(7, [4, 2, 1], id="binary-remainder"),
        pytest.param(_SQLITE_ROWS, [_SQLITE_ROWS], id="one-full-statement"),
        pytest.param(2 * _SQLITE_ROWS + 3, [_SQLITE_ROWS, _SQLITE_ROWS, 2, 1], id="full-then-rest"),
    ],
)
def test_statement_sizes_come_from_a_fixed_ladder(n: int, sizes: list[int]) -> None:
    assert _ladder(n) == sizes


def test_any_batch_uses_few_distinct_statements() -> None:
    # Each distinct statement text stays prepared (with all its bound values) in the
    # connection's cache: batches of every size must share a handful of them.
    seen = {size for n in range(1, 3 * _SQLITE_ROWS) for size in _ladder(n)}
    assert seen == {1 << i for i in range(_SQLITE_ROWS.bit_length())}
    assert len(seen) <= 9


async def test_large_batches_span_several_statements(store: Store) -> None:
    # SQLite takes a batch in statements of _SQLITE_ROWS rows, one transaction; a retry
    # overlapping both ends adds only the new rows.
    now = time.time()
    n = _SQLITE_ROWS + 30
    rows = [new_row(f"big-{i}", now, "/v1/completions") | {"model": f"m{i % 3}"} for i in range(n)]
    await store.requests.insert_many(rows)
    assert await store.requests.count() == n
    await store.requests.insert_many([*rows[n - 100 :], new_row("big-new", now, "/v1/x")])
    assert await store.requests.count() == n + 1
    assert sum(u.requests for u in await store.requests.usage()) == n + 1


async def test_sqlite_request_log_keeps_the_wal_bounded(tmp_path: Path) -> None:
    # A steady stream of request rows must not grow the WAL without bound (SQLite
    # checkpoints it inside the commits that cross 1,000 pages).
    store = await open_store("sqlite", tmp_path)
    try:
        now = time.time()
        for b in range(30):
            await store.requests.insert_many(
                [new_row(f"w{b}-{i}", now, "/v1/completions") for i in range(500)]
            )
        assert await store.requests.count() == 15_000
        assert (tmp_path / "inferno.db-wal").stat().st_size < 8_000_000
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("sqlite:///x.db", "sqlite+aiosqlite:///x.db", id="sqlite"),
        pytest.param("postgresql://u@h/db", "postgresql+asyncpg://u@h/db", id="postgres"),
        pytest.param("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db", id="as-is"),
    ],
)
def test_urls_pick_async_drivers(url: str, expected: str) -> None:
    assert normalise_url(url) == expected


def test_unknown_driver_is_refused() -> None:
    with pytest.raises(ConfigError, match="'database_url': mysql:// is not supported"):
        normalise_url("mysql://u@h/db")


def test_postgres_without_its_driver_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from inferno.store import engine

    monkeypatch.setattr(engine, "_installed", lambda module: module != "asyncpg")
    with pytest.raises(ConfigError, match=r"pip install 'inferno\[postgres\]'"):
        normalise_url("postgresql://u:secret@h/db")


async def test_the_utc_day_is_derived_from_ts_when_written(store: Store) -> None:
    # The proxy's rows leave "day" out (no strftime per request); the store fills it in.
    late = 1_795_651_199.5  # 2026-11-25 23:59:59.5 UTC
    await store.requests.insert_many(
        [new_row("d1", late, "/v1/x"), new_row("d2", late + 1, "/v1/x")]
    )
    days = {r["request_id"]: r["day"] for r in await store.requests.recent()}
    assert days == {"d1": "2026-11-25", "d2": "2026-11-26"}


async def test_stores_starting_together_on_a_new_postgresql_schema() -> None:
    # Proxy workers and replicas start at the same moment on one new database and a schema
    # not created yet: one creates and migrates it, the others find it done. (SQLite
    # serialises start-up with a lock on the database file, one process at a time.)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    stores = [Store(require_postgres(), schema=schema) for _ in range(4)]
    try:
        await asyncio.wait_for(asyncio.gather(*(s.start() for s in stores)), 60)
        for s in stores:  # every one of them works on the migrated schema
            assert await s.keys.list() == []
    finally:
        await stores[0].drop_schema()
        for s in stores:
            await s.close()
