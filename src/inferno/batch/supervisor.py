"""The status machine's background steps, safe to run in several replicas at once.

Each tick: validate new batches (under the batch's lease, renewed while it runs), expire
batches past their window, finalise batches with no open item (write the output and error
files, then the final status), start due schedules, and delete expired files. Every step
is a compare-and-set on the batch's status or a lease, so a replica killed mid-step leaves
work another tick (here or elsewhere) redoes, and two replicas never both do it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from croniter import croniter

from inferno.batch.files import FileStore
from inferno.batch.idle import IdleBackoff
from inferno.batch.lifecycle import create_batch
from inferno.batch.metrics import BatchMetrics
from inferno.batch.output import write_results
from inferno.batch.types import Owner
from inferno.batch.validate import validate_into
from inferno.store import Store

log = logging.getLogger("inferno.batch")
_METRICS_EVERY = 5.0  # seconds between item counts for /metrics
Lookup = Callable[[str | None], Owner | None]  # a batch owner's key, None if revoked


def next_run(cron: str, after: float) -> float:
    return float(croniter(cron, after).get_next(float))


class Supervisor:
    def __init__(self, store: Store, files: FileStore, lookup: Lookup, *, instance: str,
                 poll_interval: float, lease: float, max_lines: int, missed_runs: str,
                 metrics: BatchMetrics | None = None,
                 on_ready: Callable[[], None] = lambda: None) -> None:
        self._store = store
        self._files = files
        self._lookup = lookup
        self._instance = instance
        self._poll = poll_interval
        self._lease = lease
        self._max_lines = max_lines
        self._missed = missed_runs
        self._metrics = metrics
        self._on_ready = on_ready  # items became claimable (wake the local workers)
        self._validating: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._idle = IdleBackoff(poll_interval)
        self._started = False
        self._files_swept = 0.0
        self._observed = 0.0

    def wake(self) -> None:
        self._idle.reset()
        self._wake.set()

    async def run(self) -> None:
        try:
            while True:
                try:
                    active = await self.tick()
                except Exception:
                    log.exception("batch supervisor tick failed")
                    active = True
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that
                    # lands as the event fires, and the task would never stop.
                    async with asyncio.timeout(self._idle.next(active)):
                        await self._wake.wait()
        finally:
            for task in self._validating.values():
                task.cancel()
            await asyncio.gather(*self._validating.values(), return_exceptions=True)

    async def tick(self) -> bool:
        """One look at the batches that are not done; whether any was found (or is being
        validated here), i.e. whether the next look should come soon."""
        now = time.time()
        store = self._store
        rows = await store.batches.with_status("validating", "in_progress", "cancelling",
                                               "finalizing")
        if self._metrics is not None and now - self._observed >= _METRICS_EVERY:
            # Counting every item is O(items): for /metrics only, and only now and then.
            self._observed = now
            self._metrics.observe(rows, await store.batch_items.counts_by_batch(
                [r["id"] for r in rows if r["status"] != "validating"]))
        for row in rows:
            status = row["status"]
            if status == "validating":
                if row["id"] not in self._validating and await store.batches.lease(
                        row["id"], self._instance, now, self._lease, when=("validating",)):
                    task = asyncio.create_task(self._validate(row))
                    self._validating[row["id"]] = task
                    task.add_done_callback(functools.partial(self._validated, row["id"]))
                continue
            if status in ("in_progress", "cancelling"):
                open_ = await store.batch_items.open_states(row["id"])
                end = "cancelled" if status == "cancelling" else "expired"
                if open_ and (status == "cancelling" or now >= row["expires_at"]):
                    # Items not started end now; those in flight finish, or, once their
                    # lease could have run out, end too (a dead worker's items).
                    overdue = now >= (row["cancelling_at"] or row["expires_at"]) + self._lease
                    if open_ & {"new", "pending"} or overdue:
                        await store.batch_items.close_open(row["id"], end, running_too=overdue)
                        open_ = await store.batch_items.open_states(row["id"])
                if open_:
                    continue
            await self._finalize(row, now)
        await self._schedules(now, first=not self._started)
        self._started = True
        if now - self._files_swept > 60:
            self._files_swept = now
            await self._sweep_files(now)
        return bool(rows or self._validating)

    def _validated(self, batch_id: str, task: asyncio.Task[None]) -> None:
        self._validating.pop(batch_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("batch %s: validation failed: %r", batch_id, task.exception())

    async def _validate(self, row: dict[str, Any]) -> None:
        store = self._store
        renew = asyncio.create_task(self._renew(row["id"]))
        try:
            owner = self._lookup(row["owner"])
            file = await store.files.get(row["input_file_id"])
            if owner is None or file is None:
                what = "input file" if owner else "owner's API key"
                await self._fail(row["id"], [{"code": "invalid_request", "param": None,
                                              "line": None,
                                              "message": f"The batch's {what} no longer exists."}])
                return
            checked = await validate_into(store, row["id"], self._files.path(file["sha256"]),
                                          row["endpoint"], owner, max_lines=self._max_lines)
            if checked.errors:
                await self._fail(row["id"], checked.errors)
                return
            await store.batch_items.activate(row["id"])
            if await store.batches.update(row["id"], when=("validating",), status="in_progress",
                                          in_progress_at=time.time(), total=checked.total,
                                          lease_owner=None, lease_expires=None):
                self._on_ready()
            self.wake()
        finally:
            renew.cancel()

    async def _renew(self, batch_id: str) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            with contextlib.suppress(Exception):
                await self._store.batches.lease(batch_id, self._instance, time.time(),
                                                self._lease, when=("validating",))

    async def _fail(self, batch_id: str, errors: list[dict[str, Any]]) -> None:
        await self._store.batches.update(
            batch_id, when=("validating",), status="failed", failed_at=time.time(),
            errors={"object": "list", "data": errors}, lease_owner=None, lease_expires=None)

    async def _finalize(self, row: dict[str, Any], now: float) -> None:
        store = self._store
        status = row["status"]
        counts = await store.batch_items.counts(row["id"])
        if status == "cancelling":
            end = "cancelled"
        elif counts.get("expired"):
            end = "expired"
        else:
            end = "completed"
            if status == "in_progress":
                if not await store.batches.update(row["id"], when=("in_progress",),
                                                  status="finalizing", finalizing_at=now):
                    return
                status = "finalizing"
        if not await store.batches.lease(row["id"], self._instance, now, self._lease,
                                         when=(status,)):
            return  # another replica is finalising it, or already has
        if end == "completed" and await store.batch_items.open_states(row["id"]):
            # Never write a completed batch's files while an item may still change (its
            # outcome would be in neither file); the item ends, and a later tick finishes.
            log.error("batch %s: finalizing with open items; finishing later", row["id"])
            return
        columns = await write_results(store, self._files, row, end)
        await store.batches.update(row["id"], when=(status,), status=end,
                                   **{f"{end}_at": time.time()}, **columns,
                                   lease_owner=None, lease_expires=None)

    async def _schedules(self, now: float, *, first: bool) -> None:
        for s in await self._store.schedules.due(now):
            run = not (first and self._missed == "skip" and s["next_run_at"] < now - self._poll)
            batch_id = None
            if run:
                batch = await create_batch(
                    self._store, owner=s["owner"], input_file_id=s["input_file_id"],
                    endpoint=s["endpoint"], completion_window=s["completion_window"],
                    metadata={**(s["metadata"] or {}), "schedule_id": s["id"]},
                    idempotency=f"schedule:{s['id']}:{s['next_run_at']}")
                batch_id = batch["id"]
            await self._store.schedules.advance(
                s["id"], expected_next=s["next_run_at"], next_run_at=next_run(s["cron"], now),
                last_run_at=now if run else s["last_run_at"],
                last_batch_id=batch_id or s["last_batch_id"])

    async def _sweep_files(self, now: float) -> None:
        for file_id in await self._store.files.expired(now):
            orphan = await self._store.files.delete(file_id)
            if orphan is not None:
                await asyncio.to_thread(self._files.remove, orphan)
