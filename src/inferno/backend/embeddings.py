"""``POST /v1/embeddings`` on a node, and the micro-batcher embedding engines share.

:class:`MicroBatcher` turns many small concurrent requests into few large model calls:
a request's items join a FIFO; one worker takes up to ``max_batch`` items (a big request
is split across batches, a small one shares a batch with others), waiting at most
``max_wait`` seconds for a batch to fill when the model is idle, and runs the batch in a
worker thread. While one batch runs, the next accumulates, so under load batches fill
without waiting. Cancelled requests are skipped before their items are computed.

:func:`embeddings_body` is the endpoint: validation beyond the schema (``dimensions``,
token-id input), the engine call, and the OpenAI response (float lists, or base64 of
little-endian float32, which is what the ``openai`` client decodes).
"""

from __future__ import annotations

import array
import asyncio
import base64
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import orjson

from inferno.api import openai as oa
from inferno.backend.engines.base import EmbeddingEngine
from inferno.core.errors import InvalidRequest, UnsupportedParameter

T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True)
class _Job(Generic[T, R]):
    items: Sequence[T]
    future: asyncio.Future[list[R]]
    results: list[R | None] = field(default_factory=list)
    taken: int = 0  # items handed to a batch so far
    done: int = 0  # items whose results arrived


class MicroBatcher(Generic[T, R]):
    def __init__(self, run: Callable[[list[T]], Sequence[R]], *, max_batch: int = 32,
                 max_wait: float = 0.002) -> None:
        self._run = run
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._jobs: deque[_Job[T, R]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self.queued_items = 0  # submitted, not yet in a batch
        self.active_items = 0  # in the batch being computed
        self.batches = 0

    async def submit(self, items: Sequence[T]) -> list[R]:
        if not items:
            return []
        loop = asyncio.get_running_loop()
        job: _Job[T, R] = _Job(items, loop.create_future(), [None] * len(items))
        self._jobs.append(job)
        self.queued_items += len(items)
        worker = self._worker
        if worker is None or worker.done() or worker.get_loop() is not loop:
            # A fresh event per worker: an Event belongs to the loop that first awaited it.
            self._wakeup = asyncio.Event()
            self._worker = asyncio.create_task(self._work(), name="embedding-batcher")
        assert self._wakeup is not None
        self._wakeup.set()
        try:
            return await job.future
        finally:
            if not job.future.done():
                job.future.cancel()

    async def close(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None and not worker.done():
            worker.cancel()
            if worker.get_loop() is asyncio.get_running_loop():
                await asyncio.gather(worker, return_exceptions=True)
        for job in self._jobs:
            if not job.future.done():
                job.future.cancel()
        self._jobs.clear()

    def _pending(self) -> int:
        return sum(len(j.items) - j.taken for j in self._jobs if not j.future.done())

    async def _work(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            self._drop_cancelled()
            if not self._jobs:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            deadline = loop.time() + self.max_wait
            while self._pending() < self.max_batch and (left := deadline - loop.time()) > 0:
                self._wakeup.clear()
                try:
                    async with asyncio.timeout(left):
                        await self._wakeup.wait()
                except TimeoutError:
                    break
            batch, parts = self._take()
            if not batch:
                continue
            self.active_items = len(batch)
            try:
                out = await asyncio.to_thread(self._run, batch)
                if len(out) != len(batch):
                    raise RuntimeError(f"batch of {len(batch)} returned {len(out)} results")
            except Exception as exc:
                for job, _, _ in parts:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            finally:
                self.active_items = 0
                self.batches += 1
            pos = 0
            for job, start, n in parts:
                job.results[start:start + n] = out[pos:pos + n]
                pos += n
                job.done += n
                if job.done == len(job.items) and not job.future.done():
                    job.future.set_result(job.results)  # type: ignore[arg-type]  # all filled

    def _drop_cancelled(self) -> None:
        while self._jobs and self._jobs[0].future.done():
            job = self._jobs.popleft()
            self.queued_items -= len(job.items) - job.taken

    def _take(self) -> tuple[list[T], list[tuple[_Job[T, R], int, int]]]:
        batch: list[T] = []
        parts: list[tuple[_Job[T, R], int, int]] = []
        for job in list(self._jobs):
            if len(batch) >= self.max_batch:
                break
            if job.future.done():
                self.queued_items -= len(job.items) - job.taken
                job.taken = len(job.items)
                self._jobs.remove(job)
                continue
            n = min(self.max_batch - len(batch), len(job.items) - job.taken)
            batch.extend(job.items[job.taken:job.taken + n])
            parts.append((job, job.taken, n))
            job.taken += n
            self.queued_items -= n
            if job.taken == len(job.items):
                self._jobs.remove(job)
        return batch, parts


def _f32le(vec: Any) -> bytes:
    if hasattr(vec, "astype"):  # a NumPy row
        return bytes(vec.astype("<f4").tobytes())
    arr = array.array("f", vec)
    if sys.byteorder == "big":
        arr.byteswap()
    return arr.tobytes()


def _texts(ereq: oa.EmbeddingRequest) -> list[str]:
    inp = ereq.input
    if isinstance(inp, str):
        texts = [inp]
    elif inp and all(isinstance(x, str) for x in inp):
        texts = [x for x in inp if isinstance(x, str)]
    else:
        raise UnsupportedParameter(
            "Token-id input is not supported by this node; send the text (a string or a "
            "list of strings) instead.", param="input")
    for i, t in enumerate(texts):
        if not t:
            where = "'input'" if isinstance(inp, str) else f"'input[{i}]'"
            raise InvalidRequest(f"{where} is an empty string; every input must have text.",
                                 param="input")
    return texts


async def embeddings_body(engine: EmbeddingEngine, ereq: oa.EmbeddingRequest) -> bytes:
    info = engine.info
    if ereq.dimensions is not None and ereq.dimensions != info.dimensions:
        raise UnsupportedParameter(
            f"The model '{ereq.model}' produces {info.dimensions}-dimensional embeddings and "
            "cannot shorten them; omit 'dimensions'"
            + (f" or set it to {info.dimensions}." if info.dimensions else "."),
            param="dimensions")
    texts = _texts(ereq)
    result = await engine.embed(texts)
    data: list[dict[str, Any]] = []
    b64 = ereq.encoding_format == "base64"
    for i, vec in enumerate(result.vectors):
        if b64:
            emb: Any = base64.b64encode(_f32le(vec)).decode("ascii")
        else:
            emb = vec
        data.append({"object": "embedding", "index": i, "embedding": emb})
    body = {"object": "list", "data": data, "model": ereq.model,
            "usage": {"prompt_tokens": result.prompt_tokens,
                      "total_tokens": result.prompt_tokens}}
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
