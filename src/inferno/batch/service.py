"""The Batch and Files API of one process: its routes (mounted on the proxy), the
supervisor and the workers, started and stopped together."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from inferno.batch.batches_api import BatchesAPI
from inferno.batch.files import FileStore, LocalLines, MultipartUpload
from inferno.batch.files_api import FilesAPI
from inferno.batch.metrics import BatchMetrics
from inferno.batch.runner import Runner, RunnerConfig
from inferno.batch.supervisor import Lookup, Supervisor
from inferno.batch.types import Dispatch, Identify
from inferno.core.config import BatchSettings
from inferno.net import Request, Response, StreamingResponse
from inferno.store import Store
from inferno.store.audit import AuditEvent


def runner_config(s: BatchSettings) -> RunnerConfig:
    return RunnerConfig(concurrency=s.workers, lease=s.lease, max_attempts=s.max_attempts,
                        retry_base=s.retry_base, retry_max=s.retry_max,
                        poll_interval=s.poll_interval)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


class BatchService:
    def __init__(self, store: Store, settings: BatchSettings, *, data_dir: Path,
                 identify: Identify, lookup: Lookup, dispatch: Dispatch | None,
                 registry: CollectorRegistry | None = None,
                 audit: Callable[[AuditEvent], None] = lambda event: None) -> None:
        s = settings
        self.instance = f"b-{secrets.token_hex(6)}"
        self._identify = identify
        self._store = store
        self.files = FileStore(data_dir / "files")
        self.metrics = BatchMetrics(registry) if registry is not None else None
        outcome = self.metrics.outcome if self.metrics is not None else None
        self.runner = (Runner(store, dispatch, LocalLines(self.files, self._digest_of),
                              runner_config(s), instance=self.instance, on_outcome=outcome)
                       if dispatch is not None and s.workers > 0 else None)
        self.supervisor = Supervisor(
            store, self.files, lookup, instance=self.instance, poll_interval=s.poll_interval,
            lease=s.lease, max_lines=s.max_lines, missed_runs=s.missed_runs,
            metrics=self.metrics, on_ready=self.runner.wake if self.runner else lambda: None)
        self.files_api = FilesAPI(store, self.files, max_size=s.files_max_size)
        self.batches_api = BatchesAPI(store, self.files_api, self.supervisor.wake, audit)
        self._tasks: list[asyncio.Task[None]] = []

    async def _digest_of(self, file_id: str) -> str | None:
        row = await self._store.files.get(file_id)
        return None if row is None else str(row["sha256"])

    # ---- the proxy's Mount ----
    def owns(self, path: str) -> bool:
        return _under(path, "/v1/files") or _under(path, "/v1/batches")

    def body_sink(self, req: Request) -> MultipartUpload | None:
        return self.files_api.sink(req)

    async def handle(self, req: Request) -> Response | StreamingResponse:
        owner = self._identify(req)
        if _under(req.path, "/v1/files"):
            return await self.files_api.handle(req, owner)
        return await self.batches_api.handle(req, owner)

    # ---- lifecycle ----
    async def start(self) -> None:
        await asyncio.to_thread(self.files.start)
        self._tasks.append(asyncio.create_task(self.supervisor.run()))
        if self.runner is not None:
            self._tasks.append(asyncio.create_task(self.runner.run()))

    async def drain(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
