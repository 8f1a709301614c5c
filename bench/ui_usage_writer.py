"""What the usage roll-up costs the request-log writer.

Writes ``--rows`` request-log rows (bench/ui.py's rows: three keys, two models, one a
second) in 4,096-row batches, as the proxy's writer does, into a fresh SQLite file and a
fresh PostgreSQL schema per round, with ``RequestRepo.insert_many`` (log rows + roll-up,
one transaction) and with the log rows alone (the statements the writer used before the
roll-up: SQLite's multi-row INSERTs; PostgreSQL's ``executemany``, and the ``unnest``
insert without the roll-up), rounds alternating. Prints this process's CPU and the wall
time per row (PostgreSQL's own CPU is in the wall time only).

    .venv/bin/python bench/ui_usage_writer.py [--rows 200000] [--rounds 3] [--only sqlite|postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.ui_seed import log_rows  # noqa: E402

from inferno.store import Store  # noqa: E402
from inferno.store.models import request_log  # noqa: E402
from inferno.store.repos import _LOG_COLUMNS, _insert_sql, _ladder, _utc_day  # noqa: E402
from inferno.store.usage import postgres_insert  # noqa: E402

PG_URL = os.environ.get("INFERNO_BENCH_POSTGRES_URL",
                        "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
BATCH = 4096
_NAMES = ", ".join(n for n, _ in _LOG_COLUMNS)
_PG_ONE = (f"INSERT INTO {request_log.name} ({_NAMES}) VALUES "
           f"({', '.join(f'${i}' for i in range(1, len(_LOG_COLUMNS) + 1))}) "
           "ON CONFLICT (request_id) DO NOTHING")
# The unnest insert alone: the roll-up statement's first half.
_PG_UNNEST = postgres_insert([n for n, _ in _LOG_COLUMNS]).split(" RETURNING ")[0][len(
    "WITH ins AS ("):]


def _days(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        row.setdefault("day", _utc_day(int(row["ts"] // 86_400)))


async def log_only_sqlite(store: Store, rows: list[dict[str, Any]]) -> None:
    _days(rows)
    async with store.engine.begin() as conn:
        i = 0
        for size in _ladder(len(rows)):
            flat = tuple(row.get(n, d) for row in rows[i:i + size] for n, d in _LOG_COLUMNS)
            await conn.exec_driver_sql(_insert_sql(size), flat)
            i += size


async def log_only_executemany(store: Store, rows: list[dict[str, Any]]) -> None:
    _days(rows)
    async with store.engine.begin() as conn:
        await conn.exec_driver_sql(_PG_ONE, [tuple(row.get(n, d) for n, d in _LOG_COLUMNS)
                                             for row in rows])


async def log_only_unnest(store: Store, rows: list[dict[str, Any]]) -> None:
    _days(rows)
    async with store.engine.begin() as conn:
        await conn.exec_driver_sql(_PG_UNNEST, tuple([row.get(n, d) for row in rows]
                                                     for n, d in _LOG_COLUMNS))


async def with_rollup(store: Store, rows: list[dict[str, Any]]) -> None:
    await store.requests.insert_many(rows)


async def one_round(kind: str, write: Callable[[Store, list[dict[str, Any]]], Awaitable[None]],
                    n: int, tmp: Path) -> tuple[float, float]:
    schema = None
    if kind == "sqlite":
        store = Store(f"sqlite:///{tmp / uuid.uuid4().hex}.db")
    else:
        schema = f"bench_w_{uuid.uuid4().hex[:8]}"
        store = Store(PG_URL, schema=schema)
    await store.start()
    now = time.time()
    batches = [log_rows(min(BATCH, n - s), now=now - s) for s in range(0, n, BATCH)]
    try:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for batch in batches:
            await write(store, batch)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        assert await store.requests.count() == n
    finally:
        await store.drop_schema()
        await store.close()
    return cpu / n * 1e6, wall / n * 1e6


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=["sqlite", "postgres"])
    a = ap.parse_args()
    variants: dict[str, list[tuple[str, Any]]] = {
        "sqlite": [("log only", log_only_sqlite), ("log + roll-up", with_rollup)],
        "postgres": [("log only, executemany", log_only_executemany),
                     ("log only, unnest", log_only_unnest), ("log + roll-up", with_rollup)]}
    tmp = Path(tempfile.mkdtemp(prefix="inferno-bench-writer-"))
    for kind, runs in variants.items():
        if a.only not in (None, kind):
            continue
        results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in runs}
        for _ in range(a.rounds):
            for name, write in runs:
                results[name].append(await one_round(kind, write, a.rows, tmp))
        print(f"\n{kind}: {a.rows:,} rows in {BATCH:,}-row batches, {a.rounds} rounds "
              "(median)")
        print(f"{'':<24}{'CPU us/row':>11}{'wall us/row':>12}")
        base = statistics.median(c for c, _ in results[runs[0][0]])
        for name, xs in results.items():
            cpu = statistics.median(c for c, _ in xs)
            wall = statistics.median(w for _, w in xs)
            print(f"{name:<24}{cpu:>11.1f}{wall:>12.1f}   CPU {cpu / base:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
