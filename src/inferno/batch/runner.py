"""Workers: claim due items under a lease, dispatch them, record each outcome once.

One :class:`Runner` keeps up to ``concurrency`` items in flight, and as many claimed ahead.
Items are claimed in one statement (see ``store/batch_items.py``), in the background, and
their leases renewed every third of the lease until their outcome is recorded, so only a
dead worker's items are taken over. Each item's line is read from the input file
(``ReadLine``) and its ``body`` sent through ``Dispatch``. Outcomes:

- 2xx: the output line, recorded with the state ``done`` in one statement;
- retryable (408, 409, 429, 5xx, or no answer): back to ``pending`` for a later attempt,
  after ``retry_base`` doubling per attempt up to ``retry_max``, or the answer's
  ``Retry-After`` when longer; after ``max_attempts`` the last answer goes to the error
  file (the dead letter);
- any other 4xx: the error file at once.

Outcomes go through the store's background writer, many to a transaction; an outcome not
yet written when the process dies leaves its item leased, and it runs again elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from inferno.batch.idle import IdleBackoff
from inferno.batch.types import Answer, Dispatch, ReadLine
from inferno.store import BatchWriter, Claimed, Store

log = logging.getLogger("inferno.batch")
_RETRYABLE = frozenset({408, 409, 429})


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    concurrency: int = 8
    lease: float = 30.0
    max_attempts: int = 5
    retry_base: float = 1.0
    retry_max: float = 60.0
    poll_interval: float = 0.5


def retryable(status: int) -> bool:
    return status in _RETRYABLE or status >= 500


def line(custom_id: str, answer: Answer | None, error: dict[str, str] | None = None) -> str:
    """One line of the output or error file, in OpenAI's shape."""
    response = None
    if answer is not None:
        try:
            body: Any = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            body = answer.body.decode("utf-8", "replace")
        response = {"status_code": answer.status, "request_id": answer.request_id,
                    "body": body}
    return orjson.dumps({"id": f"batch_req_{secrets.token_hex(12)}", "custom_id": custom_id,
                         "response": response, "error": error}).decode()


def _usage(body: bytes) -> tuple[int, int]:
    try:
        usage = orjson.loads(body).get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return 0, 0
    if not isinstance(usage, dict):
        return 0, 0
    p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (p if isinstance(p, int) else 0, c if isinstance(c, int) else 0)


class Runner:
    def __init__(self, store: Store, dispatch: Dispatch, read_line: ReadLine,
                 config: RunnerConfig, *,
                 instance: str | None = None,
                 on_outcome: Callable[[str], object] | None = None) -> None:
        self._store = store
        self._dispatch = dispatch
        self._read_line = read_line
        self._cfg = config
        self.instance = instance or f"w-{secrets.token_hex(6)}"
        self._in_flight: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._ready: deque[Claimed] = deque()  # claimed (leased), not started yet
        self._claiming: asyncio.Task[None] | None = None
        # batch id -> (owner, endpoint, input file id)
        self._batches: dict[str, tuple[str | None, str, str]] = {}
        self._wake = asyncio.Event()
        self._idle = IdleBackoff(config.poll_interval)
        self._claimed_some = False  # the last claim found items (the loop is not idle)
        self._on_outcome = on_outcome or (lambda outcome: None)
        self.done = self.failed = self.retried = 0
        self._outcomes: BatchWriter[dict[str, Any]] = BatchWriter(
            store.batch_items.record, name="batch-outcomes", queue_size=1_000_000,
            batch_size=256, flush_interval=0.02, log=log)

    def wake(self) -> None:
        self._idle.reset()
        self._wake.set()

    async def run(self) -> None:
        renew = asyncio.create_task(self._renew())
        self._outcomes.start()
        try:
            n = self._cfg.concurrency
            while True:
                while self._ready and len(self._in_flight) < n:
                    item = self._ready.popleft()
                    key = (item.batch_id, item.line)
                    task = asyncio.create_task(self._process(item))
                    self._in_flight[key] = task
                    task.add_done_callback(functools.partial(self._finished, key))
                # Claim a round ahead, once half a round is free (one claim per n/2 items,
                # not per item), in the background: a free slot never waits on a claim.
                want = 2 * n - len(self._in_flight) - len(self._ready)
                if self._claiming is None and (want >= max(1, n // 2) or (
                        want > 0 and not self._ready)):
                    self._claiming = asyncio.create_task(self._claim(want))
                self._wake.clear()
                # Not idle while items run or wait, or the last claim found some. (A claim
                # started just now does not count: an empty one must let the wait grow.)
                busy = bool(self._in_flight or self._ready or self._claimed_some)
                self._claimed_some = False
                with contextlib.suppress(TimeoutError):
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that
                    # lands as the event fires, and the task would never stop.
                    async with asyncio.timeout(self._idle.next(busy)):
                        await self._wake.wait()
        finally:
            renew.cancel()
            if self._claiming is not None:
                self._claiming.cancel()
            tasks = list(self._in_flight.values())
            for t in tasks:
                t.cancel()
            await asyncio.gather(renew, *tasks, return_exceptions=True)
            await self._outcomes.close(within=5.0)

    async def _claim(self, want: int) -> None:
        try:
            claimed = await self._store.batch_items.claim(
                self.instance, time.time(), self._cfg.lease, want)
        except Exception as exc:  # the database is away: keep trying
            log.warning("batch: cannot claim items: %s", type(exc).__name__)
            claimed = []
        finally:
            self._claiming = None
        self._ready.extend(claimed)
        if claimed:
            self._claimed_some = True
            self._wake.set()

    def _finished(self, key: tuple[str, int], _task: asyncio.Task[None]) -> None:
        self._in_flight.pop(key, None)
        self._wake.set()

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self._cfg.lease / 3)
            with contextlib.suppress(Exception):  # a missed renewal: the next one may land
                held = [*self._in_flight, *((c.batch_id, c.line) for c in self._ready)]
                await self._store.batch_items.renew(self.instance, held,
                                                    time.time() + self._cfg.lease)

    async def _batch(self, batch_id: str) -> tuple[str | None, str, str] | None:
        known = self._batches.get(batch_id)
        if known is None:
            row = await self._store.batches.get(batch_id)
            if row is None:
                return None
            if len(self._batches) > 1000:
                self._batches.clear()
            known = self._batches[batch_id] = (row["owner"], row["endpoint"],
                                               row["input_file_id"])
        return known

    async def _process(self, item: Claimed) -> None:
        try:
            await self._attempt(item)
        except Exception as exc:  # the item stays leased; another worker takes it over
            log.warning("batch: item %s/%d not recorded: %s", item.batch_id, item.line,
                        type(exc).__name__)

    async def _attempt(self, item: Claimed) -> None:
        batch = await self._batch(item.batch_id)
        if batch is None:
            return
        owner, endpoint, file_id = batch
        try:
            raw = await self._read_line(file_id, item.offset, item.length)
            body = orjson.dumps(orjson.loads(raw)["body"])  # validated when the batch began
            answer = await self._dispatch(owner, endpoint, body)
        except Exception as exc:  # the host failed us; treat as a retryable server error
            log.warning("batch: dispatch failed: %s", type(exc).__name__)
            answer = Answer(500, orjson.dumps({"error": {
                "message": "The request could not be dispatched.", "type": "server_error",
                "code": "internal_error"}}))
        key = {"batch_id": item.batch_id, "line": item.line, "owner": self.instance}
        if 200 <= answer.status < 300:
            prompt, completion = _usage(answer.body)
            self._record("done", {**key, "state": "done", "status_code": answer.status,
                                  "result": line(item.custom_id, answer),
                                  "prompt_tokens": prompt, "completion_tokens": completion})
        elif retryable(answer.status) and item.attempts < self._cfg.max_attempts:
            delay = min(self._cfg.retry_max, self._cfg.retry_base * 2 ** (item.attempts - 1))
            delay = max(delay * random.uniform(0.8, 1.2), answer.retry_after or 0.0)
            self._record("retried", {**key, "retry_at": time.time() + delay})
        else:
            self._record("failed", {**key, "state": "failed", "status_code": answer.status,
                                    "result": line(item.custom_id, answer)})

    def _record(self, outcome: str, row: dict[str, Any]) -> None:
        self._outcomes.put(row)
        setattr(self, outcome, getattr(self, outcome) + 1)
        self._on_outcome(outcome)
