"""store.writer.BatchWriter with an in-memory sink: batching, bounds, failures, shutdown."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, Gauge

from inferno.store.writer import BatchWriter


class Refused(Exception):
    # As a driver error wrapped by SQLAlchemy: PostgreSQL's integrity violation.
    orig = SimpleNamespace(sqlstate="23505")


class Sink:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.fail: BaseException | None = None

    async def write(self, batch: list[int]) -> None:
        await asyncio.sleep(0)
        if self.fail is not None:
            raise self.fail
        self.batches.append(batch)

    @property
    def rows(self) -> list[int]:
        return [r for b in self.batches for r in b]


async def test_full_batches_at_once_partial_ones_each_interval() -> None:
    sink = Sink()
    w = BatchWriter(sink.write, name="t", queue_size=100, batch_size=4, flush_interval=0.2)
    w.start()
    try:
        await asyncio.sleep(0.05)  # the writer waits for rows
        for i in range(9):
            w.put(i)
        await asyncio.sleep(0.05)  # a full batch woke it: it drains in batches of four
        assert sink.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
        w.put(9)
        await asyncio.sleep(0.05)
        assert w.backlog == 1  # a partial batch waits for the interval
        await asyncio.sleep(0.3)
        assert sink.rows == list(range(10)) and w.backlog == 0 and w.written == 10
    finally:
        assert await w.close()


async def test_bounded_queue_drops_and_counts_and_feeds_the_gauge() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("backlog", "rows waiting", registry=registry)
    dropped: list[int] = []
    w = BatchWriter(
        Sink().write,
        name="t",
        queue_size=3,
        batch_size=10,
        flush_interval=60,
        on_dropped=dropped.append,
        backlog_gauge=gauge,
    )
    assert [w.put(i) for i in range(5)] == [True, True, True, False, False]
    assert (w.backlog, w.dropped, dropped) == (3, 2, [1, 1])
    assert registry.get_sample_value("backlog") == 3.0


async def test_an_outage_loses_nothing_and_close_flushes() -> None:
    sink = Sink()
    w = BatchWriter(
        sink.write, name="t", queue_size=100, batch_size=2, flush_interval=0.01, max_backoff=0.02
    )
    w.start()
    sink.fail = ConnectionError("down")
    for i in range(5):
        w.put(i)
    await asyncio.sleep(0.1)
    assert w.errors >= 2 and w.backlog == 5 and not sink.batches
    sink.fail = None
    assert await w.close(within=2.0)
    assert sink.rows == [0, 1, 2, 3, 4] and w.dropped == 0


async def test_a_refused_batch_is_dropped_after_a_few_tries_not_retried_forever() -> None:
    sink = Sink()
    w = BatchWriter(
        sink.write, name="t", queue_size=100, batch_size=2, flush_interval=60, max_refusals=3
    )
    sink.fail = Refused()
    w.put(1)
    w.put(2)
    w.put(3)
    assert not await w.flush(within=0.25)  # three refusals: the first batch is dropped
    assert (w.errors, w.dropped, w.backlog) == (3, 2, 1)
    sink.fail = None
    assert await w.flush() and sink.rows == [3]


async def test_concurrent_flushes_write_each_row_once() -> None:
    sink = Sink()
    w = BatchWriter(sink.write, name="t", queue_size=1000, batch_size=7, flush_interval=60)
    w.start()
    for i in range(100):
        w.put(i)
    assert all(await asyncio.gather(w.flush(), w.flush(), w.flush()))
    await w.close()
    assert sorted(sink.rows) == list(range(100))


async def test_an_idle_writer_sleeps_until_its_first_row() -> None:
    """No timer while nothing is queued (an idle process stays asleep), and the first row
    is still written within one flush interval of its arrival."""
    sink = Sink()
    w = BatchWriter(sink.write, name="t", queue_size=100, batch_size=50, flush_interval=0.01)
    waits = 0
    wake_wait = w._wake.wait

    async def counted() -> bool:
        nonlocal waits
        waits += 1
        return await wake_wait()

    w._wake.wait = counted  # type: ignore[method-assign]
    w.start()
    try:
        await asyncio.sleep(0.2)  # 20 flush intervals with nothing queued
        assert waits == 1  # one untimed wait, not one per interval
        w.put(1)
        w.put(2)
        for _ in range(100):
            if sink.rows:
                break
            await asyncio.sleep(0.01)
        assert sink.batches == [[1, 2]]  # the second row joined the first within the interval
    finally:
        assert await w.close()
