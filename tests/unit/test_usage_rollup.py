"""The usage roll-up answers what a scan of the request log answers, on both engines."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from alembic import command
from alembic.config import Config
from sqlalchemy import delete, func, select
from sqlalchemy.engine import Connection

from inferno.core.errors import InvalidRequest
from inferno.proxy.accounting import new_row
from inferno.store import Store, repos
from inferno.store.engine import _MIGRATIONS
from inferno.store.models import request_log, usage_rollup
from inferno.store.usage import UsageRow
from tests.unit.test_store import BACKENDS, open_store

DAY0 = 1_795_564_800  # 2026-11-25 00:00:00 UTC


@pytest_asyncio.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(request.param, tmp_path)
    yield s
    await s.drop_schema()
    await s.close()


def varied_rows(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """Keys and models (some absent), four days, hour and day boundaries hit exactly and
    missed by a fraction, errors, cache hits, tokens and fractional costs."""
    rnd = random.Random(seed)
    edges = [DAY0 + 86_400 - 0.25, DAY0 + 86_400, DAY0 + 3 * 3600 - 1e-3, DAY0 + 3 * 3600]
    rows = []
    for i in range(n):
        ts = edges[i] if i < len(edges) else DAY0 + rnd.uniform(0, 4 * 86_400)
        row = new_row(f"r-{seed}-{i:06d}", ts, "/v1/chat/completions")
        row.update(key_id=rnd.choice([None, "k1", "k2", "k3"]),
                   model=rnd.choice([None, "m-small", "m-large"]),
                   status=rnd.choice([200, 200, 200, 400, 429, 502]),
                   prompt_tokens=rnd.randrange(0, 5000), completion_tokens=rnd.randrange(0, 900),
                   cost=rnd.random() / 100, cache_hit=rnd.random() < 0.1)
        rows.append(row)
    return rows


def by_group(rows: list[UsageRow]) -> dict[tuple[str, str, str], UsageRow]:
    return {(u.day, u.key_id or "", u.model or ""): u for u in rows}


def assert_same(rolled: list[UsageRow], scanned: list[UsageRow]) -> None:
    a, b = by_group(rolled), by_group(scanned)
    assert len(a) == len(rolled) and len(b) == len(scanned)  # no group split in two
    assert a.keys() == b.keys()
    for k, u in a.items():
        s = b[k]
        assert (u.requests, u.errors, u.cache_hits, u.prompt_tokens, u.completion_tokens) == (
            s.requests, s.errors, s.cache_hits, s.prompt_tokens, s.completion_tokens), k
        assert u.cost == pytest.approx(s.cost, rel=1e-9, abs=1e-12), k


FILTERS: list[dict[str, Any]] = [
    {}, {"since_day": "2026-11-26"}, {"until_day": "2026-11-26"},
    {"since_day": "2026-11-26", "until_day": "2026-11-27"}, {"key_id": "k2"},
    {"since_day": "2026-11-27", "key_id": "k1"}, {"since_day": "2026-12-01"},
]


async def test_the_roll_up_equals_a_scan_of_the_log(store: Store) -> None:
    rows = varied_rows(3000)
    for i in range(0, len(rows), 700):
        await store.requests.insert_many(rows[i:i + 700])
    # Retried batches: one already stored whole, one overlapping stored and new rows, and a
    # batch repeating an id: none of it may be counted twice.
    more = varied_rows(400, seed=8)
    await store.requests.insert_many(rows[:700])
    await store.requests.insert_many(rows[2900:] + more[:200])
    await store.requests.insert_many([*more[150:], more[399]])
    assert await store.requests.count() == 3400
    total = await store.requests.usage()
    assert sum(u.requests for u in total) == 3400
    assert {u.day for u in total} == {"2026-11-25", "2026-11-26", "2026-11-27", "2026-11-28"}
    assert {u.key_id for u in total} >= {None, "k1"} and None in {u.model for u in total}
    for f in FILTERS:
        rolled = await store.requests.usage(**f)
        assert_same(rolled, await store.requests.usage_from_log(**f))
        assert rolled or f.get("since_day") == "2026-12-01"


async def test_the_hour_and_day_follow_the_logged_day(store: Store) -> None:
    rows = varied_rows(4)  # the boundary timestamps only
    await store.requests.insert_many(rows)
    days = {r["request_id"]: r["day"] for r in await store.requests.recent()}
    assert sorted(days.values()) == ["2026-11-25", "2026-11-25", "2026-11-25", "2026-11-26"]
    async with store.engine.connect() as conn:
        hours = sorted((await conn.execute(
            select(usage_rollup.c.hour, func.sum(usage_rollup.c.requests))
            .group_by(usage_rollup.c.hour))).all())
    h0 = DAY0 // 3600
    assert [(int(h), int(n)) for h, n in hours] == [(h0 + 2, 1), (h0 + 3, 1), (h0 + 23, 1),
                                                    (h0 + 24, 1)]


async def test_pruning_the_log_leaves_usage_totals(store: Store) -> None:
    await store.requests.insert_many(varied_rows(500))
    before = await store.requests.usage()
    async with store.engine.begin() as conn:
        await conn.execute(delete(request_log).where(request_log.c.ts < DAY0 + 2 * 86_400))
    assert await store.requests.count() < 500  # the prune happened
    assert await store.requests.usage() == before
    assert sum(u.requests for u in await store.requests.usage_from_log()) < 500


def _migrate(conn: Connection, target: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = conn
    if target == "head":
        command.upgrade(cfg, "head")
    else:
        command.downgrade(cfg, target)


async def test_the_migration_rolls_up_rows_logged_before_it(store: Store) -> None:
    await store.requests.insert_many(varied_rows(2000))
    async with store.engine.begin() as conn:
        await conn.run_sync(_migrate, "0006_batch")
    async with store.engine.connect() as conn:
        assert usage_rollup.name not in await conn.run_sync(
            lambda c: c.dialect.get_table_names(c))
    async with store.engine.begin() as conn:
        await conn.run_sync(_migrate, "head")
    rolled = await store.requests.usage()
    assert sum(u.requests for u in rolled) == 2000
    assert_same(rolled, await store.requests.usage_from_log())
    await store.requests.insert_many(varied_rows(300, seed=9))  # and it keeps adding
    assert_same(await store.requests.usage(), await store.requests.usage_from_log())


async def test_a_day_that_is_not_a_date_is_refused(store: Store) -> None:
    with pytest.raises(InvalidRequest, match="'since' must be a date"):
        await store.requests.usage(since_day="2026-11")


async def test_large_payloads_are_split_across_statements(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # PostgreSQL sends a statement's column arrays in one message: bodies are cut into
    # runs of PG_PAYLOAD_CHARS, one transaction still (SQLite's statements are row-sized).
    monkeypatch.setattr(repos, "PG_PAYLOAD_CHARS", 10_000)
    rows = varied_rows(60)
    for i, row in enumerate(rows):
        row.update(request_body="q" * 3000, response_body="a" * (i * 100))
    assert len(repos._by_payload(rows)) > 10
    await store.requests.insert_many(rows)
    await store.requests.insert_many(rows[30:])  # a retry across those runs
    assert await store.requests.count() == 60
    stored = {r["request_id"]: len(r["response_body"] or "")
              for r in await store.requests.recent(limit=100)}
    assert stored == {r["request_id"]: i * 100 for i, r in enumerate(rows)}
    assert_same(await store.requests.usage(), await store.requests.usage_from_log())
