"""The async engine, URL handling and start-up migrations.

SQLite runs in WAL mode with a busy timeout, so the CLI (``inferno keys create``) and a
running proxy can use one file at once. Migrations are applied on :meth:`Store.start`
under a lock (a file lock for SQLite, an advisory lock for PostgreSQL), so replicas that
start together do not race each other.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from inferno.core.errors import ConfigError, InfernoError

log = logging.getLogger("inferno.store")
_MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 0x1F3A_C0DE  # pg_advisory_xact_lock id


class StoreUnavailable(InfernoError):
    """The database cannot be reached or refused a statement (never shown to clients)."""


def default_sqlite_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{data_dir / 'inferno.db'}"


def normalise_url(url: str) -> str:
    """Accept plain ``sqlite://`` / ``postgresql://`` URLs and pick the async drivers.

    A bad URL is a :class:`ConfigError` naming ``database_url`` and the scheme only (the URL
    may hold a password). PostgreSQL needs ``asyncpg``, the optional ``postgres`` extra."""
    scheme = url.split("://")[0] if "://" in url else "(no scheme)"
    try:
        u = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"invalid setting 'database_url': not a database URL ({scheme}://; "
                          "use sqlite:///path.db or postgresql://...)") from exc
    driver = u.drivername
    if driver in ("sqlite", "sqlite+pysqlite"):
        u = u.set(drivername="sqlite+aiosqlite")
    elif driver in ("postgresql", "postgres", "postgresql+psycopg2", "postgresql+psycopg"):
        u = u.set(drivername="postgresql+asyncpg")
    elif driver not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
        raise ConfigError(f"invalid setting 'database_url': {scheme}:// is not supported "
                          "(use sqlite:///path.db or postgresql://...)")
    if u.drivername == "postgresql+asyncpg" and not _installed("asyncpg"):
        raise ConfigError("invalid setting 'database_url': PostgreSQL needs the asyncpg "
                          "driver: pip install 'inferno[postgres]'")
    return u.render_as_string(hide_password=False)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def redact(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


class Store:
    def __init__(self, url: str, *, schema: str | None = None, pool_size: int = 5) -> None:
        """``schema`` (PostgreSQL only) puts every table in its own schema (tests use it)."""
        from inferno.store.audit import AuditRepo
        from inferno.store.batch import BatchRepo, FileRepo, ScheduleRepo
        from inferno.store.batch_items import ItemRepo
        from inferno.store.governator import GovernatorRepo
        from inferno.store.repos import KeyRepo, RequestRepo
        from inferno.store.responses import ResponseRepo

        self.url = normalise_url(url)
        self.dialect = make_url(self.url).get_backend_name()
        self.schema = schema
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if self.dialect == "postgresql":
            kwargs.update(pool_size=pool_size, max_overflow=pool_size)
            if schema:
                kwargs["connect_args"] = {"server_settings": {"search_path": schema}}
        else:
            path = make_url(self.url).database
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 5}
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.keys = KeyRepo(self.engine)
        self.requests = RequestRepo(self.engine)
        self.governator = GovernatorRepo(self.engine)
        self.audit = AuditRepo(self.engine)
        self.responses = ResponseRepo(self.engine)
        self.files = FileRepo(self.engine)
        self.batches = BatchRepo(self.engine)
        self.batch_items = ItemRepo(self.engine)
        self.schedules = ScheduleRepo(self.engine)

    def __repr__(self) -> str:
        return f"<Store {redact(self.url)}>"

    async def start(self) -> None:
        """Connect and bring the schema to the latest migration."""
        try:
            if self.dialect == "sqlite":
                with _file_lock(make_url(self.url).database):
                    async with self.engine.begin() as conn:
                        await conn.run_sync(_upgrade)
            else:
                # One process at a time (proxy workers, replicas starting together): under
                # the lock, since CREATE SCHEMA IF NOT EXISTS itself races on PostgreSQL.
                async with self.engine.begin() as conn:
                    await conn.execute(text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})"))
                    if self.schema:
                        await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
                    await conn.run_sync(_upgrade)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreUnavailable(f"cannot open the database {redact(self.url)}: "
                                   f"{type(exc).__name__}: {_first_line(exc)}") from exc

    async def drop_schema(self) -> None:
        """Tests only: remove this store's PostgreSQL schema and everything in it."""
        if self.dialect == "postgresql" and self.schema:
            async with self.engine.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))

    async def close(self) -> None:
        await self.engine.dispose()


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:300]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=5000")
    # Switching the journal mode takes a lock: only do it once per database file.
    cur.execute("PRAGMA journal_mode")
    if str(cur.fetchone()[0]).lower() != "wal":
        cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


class _file_lock:
    """Serialise migrations of one SQLite file across processes."""

    def __init__(self, db_path: str | None) -> None:
        self._path = f"{db_path}.lock" if db_path and db_path != ":memory:" else None
        self._fd: int | None = None

    def __enter__(self) -> None:
        if self._path:
            import os

            self._fd = os.open(self._path, os.O_CREAT | os.O_RDWR, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            import os

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)


def _upgrade(conn: Connection) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")
