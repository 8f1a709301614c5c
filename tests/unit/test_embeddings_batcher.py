"""The micro-batcher that embedding engines share: batching, splitting, cancellation, errors."""

from __future__ import annotations

import asyncio
import threading

import pytest

from inferno.backend.embeddings import MicroBatcher
from tests.polling import eventually


class Recorder:
    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay
        self.fail = fail
        self.gate = threading.Event()
        self.gate.set()
        self.entered = 0  # batches that reached the model (held there while gate is clear)

    def __call__(self, batch: list[int]) -> list[int]:
        self.entered += 1
        self.gate.wait(5)
        self.batches.append(list(batch))
        if self.fail:
            raise ValueError("model broke")
        return [x * 10 for x in batch]


@pytest.mark.parametrize("n,max_batch,max_batches", [
    pytest.param(32, 32, 2, id="one-batch-of-32"),
    pytest.param(40, 16, 4, id="spill-over"),
])
async def test_concurrent_requests_share_batches(n: int, max_batch: int,
                                                 max_batches: int) -> None:
    rec = Recorder()
    b: MicroBatcher[int, int] = MicroBatcher(rec, max_batch=max_batch, max_wait=0.05)
    results = await asyncio.gather(*(b.submit([i]) for i in range(n)))
    assert results == [[i * 10] for i in range(n)]
    assert len(rec.batches) <= max_batches and max(map(len, rec.batches)) <= max_batch
    assert b.queued_items == 0 and b.active_items == 0
    await b.close()


async def test_big_request_is_split_and_reassembled_in_order() -> None:
    rec = Recorder()
    b: MicroBatcher[int, int] = MicroBatcher(rec, max_batch=8, max_wait=0)
    assert await b.submit(list(range(20))) == [x * 10 for x in range(20)]
    assert [len(x) for x in rec.batches] == [8, 8, 4]
    await b.close()


async def test_cancelled_request_is_skipped() -> None:
    rec = Recorder()
    rec.gate.clear()  # hold the first batch in the model
    b: MicroBatcher[int, int] = MicroBatcher(rec, max_batch=2, max_wait=0)
    first = asyncio.create_task(b.submit([1, 2]))
    await eventually(lambda: rec.entered == 1, what="the first batch in the (held) model")
    doomed = asyncio.create_task(b.submit([3, 4]))
    kept = asyncio.create_task(b.submit([5]))
    await eventually(lambda: b.queued_items == 3, what="the next two requests queued")
    doomed.cancel()
    rec.gate.set()
    assert await first == [10, 20] and await kept == [50]
    assert [3, 4] not in rec.batches and all(3 not in x for x in rec.batches)
    assert b.queued_items == 0
    await b.close()


async def test_model_error_reaches_every_request_in_the_batch() -> None:
    b: MicroBatcher[int, int] = MicroBatcher(Recorder(fail=True), max_batch=4, max_wait=0.02)
    results = await asyncio.gather(b.submit([1]), b.submit([2]), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)
    # The batcher keeps working after a failed batch.
    b._run = Recorder()
    assert await b.submit([3]) == [30]
    await b.close()
