"""Inferno's storage layer: SQLAlchemy 2 (async) over SQLite (embedded default) or PostgreSQL.

``Store(url)`` opens the engine and applies the Alembic migrations shipped in
``inferno.store.migrations`` on :meth:`Store.start`; repositories (``store.keys``,
``store.requests``, ``store.governator``, ``store.responses``, ``store.audit``, and for
the Batch and Files API ``store.files``, ``store.batches``, ``store.batch_items``,
``store.schedules``) hold every query; :class:`BatchWriter` writes rows in the background
for the request log and the governator. Components import this package, never each other.
"""

from inferno.store.batch import BatchRepo, FileRepo, ScheduleRepo
from inferno.store.batch_items import Claimed, ItemRepo
from inferno.store.engine import Store, StoreUnavailable, default_sqlite_url, normalise_url
from inferno.store.governator import GovernatorRepo
from inferno.store.logquery import LogFilter, RequestQuery
from inferno.store.repos import ApiKeyRow, KeyRepo, RequestRepo, UsageRow
from inferno.store.responses import ResponseRepo, StoredResponse
from inferno.store.writer import BatchWriter

__all__ = [
    "ApiKeyRow",
    "BatchRepo",
    "BatchWriter",
    "Claimed",
    "FileRepo",
    "GovernatorRepo",
    "ItemRepo",
    "KeyRepo",
    "LogFilter",
    "RequestQuery",
    "RequestRepo",
    "ResponseRepo",
    "ScheduleRepo",
    "Store",
    "StoreUnavailable",
    "StoredResponse",
    "UsageRow",
    "default_sqlite_url",
    "normalise_url",
]
