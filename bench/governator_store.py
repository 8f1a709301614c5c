"""The governator's store: what the control loop pays per tick, and what the writer keeps up.

Rows: the loop's cost of one ``add_sample`` + ``add_decision`` (enqueue only, microseconds);
the background writer's throughput (samples + decisions per second, batches of 500, one
transaction each); one roll-up of every stored sample (those, plus an hour of
1 s samples for 4 pools: 14,400 rows).
SQLite in a temporary directory (WAL), and the local PostgreSQL if it answers.

    .venv/bin/python bench/governator_store.py
    .venv/bin/python bench/governator_store.py --rows 20000 --no-postgres
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

from inferno.governator.policy import Decision
from inferno.governator.store import SqlStore
from inferno.store import Store

SIGNALS = {"at": 0.0, "ready": 2, "starting": 0, "draining": 0, "in_flight": 3, "queued": 1,
           "request_rate": 4.5, "tokens_per_second": 120.0, "queue_wait_p95_s": 0.2,
           "ttft_p95_s": 0.4, "unserved_rate": 0.0, "errors": 0}


async def run(name: str, store: Store, rows: int) -> None:
    gov = SqlStore(store, raw_retention_s=3600, rollup_retention_s=86400, queue_size=rows * 2,
                   flush_interval=3600)  # the bench flushes itself
    await gov.start()
    t0 = time.perf_counter()
    for i in range(rows):
        await gov.add_sample(float(i), f"pool-{i % 4}", SIGNALS)
        await gov.add_decision(Decision(pool=f"pool-{i % 4}", at=float(i), current=2, desired=2,
                                        action="hold", reason="steady", node_type="cpu",
                                        signals=SIGNALS, outcome="noop"))
    enqueue_us = (time.perf_counter() - t0) / rows * 1e6
    t0 = time.perf_counter()
    assert await gov.flush(within=600)
    write_s = time.perf_counter() - t0
    await gov.close()
    again = SqlStore(Store(store.url, schema=store.schema), queue_size=20_000)
    await again.start()
    for i in range(14_400):
        await again.add_sample(10_000_000.0 + i / 4, f"pool-{i % 4}", SIGNALS)
    assert await again.flush(within=600)
    t0 = time.perf_counter()
    rolled = await again.store.governator.compact(10_000_000.0 + 3600 + 60, 0.0)
    compact_s = time.perf_counter() - t0
    print(f"{name:10s} loop cost {enqueue_us:6.1f} us/tick-pair | writer "
          f"{2 * rows / write_s:8.0f} rows/s ({rows} samples + {rows} decisions in "
          f"{write_s:.2f}s) | roll-up of {rolled} samples {compact_s:.2f}s")
    await again.close()
    await again.store.drop_schema()
    await again.store.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--no-postgres", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run("sqlite", Store(f"sqlite:///{Path(tmp) / 'inferno.db'}"), args.rows))
    if args.no_postgres:
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.conftest import postgres_url

    url = postgres_url()
    if url is None:
        print("postgresql: no server answers on 127.0.0.1:5432 (skipped)")
        return
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    asyncio.run(run("postgresql", Store(url, schema=schema), args.rows))


if __name__ == "__main__":
    main()
