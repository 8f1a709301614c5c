"""``inferno batch worker``: a process that runs batch items against a proxy.

It claims items from the proxy's store (the same database; several workers may share one
PostgreSQL) and sends each to the proxy as the batch's owner (see ``remote.py``), so the
proxy's routing, limits and accounting apply exactly as for items run inside it.
"""

from __future__ import annotations

import asyncio
import logging

from inferno.batch.remote import HttpDispatch
from inferno.batch.runner import Runner
from inferno.batch.service import runner_config
from inferno.core.config import BatchSettings
from inferno.store import Store, default_sqlite_url

log = logging.getLogger("inferno.batch")


class BatchWorker:
    def __init__(self, settings: BatchSettings) -> None:
        s = settings
        url = s.database_url.get_secret_value() if s.database_url else None
        self.store = Store(url or default_sqlite_url(s.data_dir), schema=s.database_schema)
        self.dispatch = HttpDispatch(s.proxy_url,
                                     s.api_key.get_secret_value() if s.api_key else None)
        self.runner = Runner(self.store, self.dispatch, self.dispatch.read_line,
                             runner_config(s))
        self._task: asyncio.Task[None] | None = None
        self._settings = s

    async def start(self) -> None:
        await self.store.start()
        self._task = asyncio.create_task(self.runner.run())
        log.info("batch worker %s: %d at a time, sending to %s", self.runner.instance,
                 self._settings.workers, self._settings.proxy_url)

    async def drain(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.dispatch.aclose()
        await self.store.close()
