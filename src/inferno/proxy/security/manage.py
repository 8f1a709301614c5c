"""What ``inferno keys`` and ``inferno usage`` do, against the proxy's configured store."""

from __future__ import annotations

import getpass
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

from inferno.core.config import ProxySettings
from inferno.core.errors import ConfigError
from inferno.proxy.security.keys import create_key
from inferno.store import ApiKeyRow, Store, UsageRow, default_sqlite_url
from inferno.store.audit import AuditEvent

T = TypeVar("T")


def open_store(settings: ProxySettings) -> Store:
    url = settings.database_url.get_secret_value() if settings.database_url else None
    if url == "none":
        raise ConfigError("invalid setting 'database_url': this proxy is configured without a "
                          "database (none); keys and usage need one")
    return Store(url or default_sqlite_url(settings.data_dir), schema=settings.database_schema)


def run(settings: ProxySettings, job: Callable[[Store], Awaitable[T]]) -> T:
    import asyncio

    async def main() -> T:
        store = open_store(settings)
        try:
            await store.start()
            return await job(store)
        finally:
            await store.close()

    return asyncio.run(main())


def cli_actor() -> str:
    """The audit trail's actor for a CLI command: the operating-system user who ran it."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid-{os.getuid()}"


def create(settings: ProxySettings, *, name: str, scope: str, models: list[str] | None,
           rpm: int | None, tpm: int | None) -> tuple[str, ApiKeyRow]:
    async def job(s: Store) -> tuple[str, ApiKeyRow]:
        key, row = await create_key(s, name=name, scope=scope, models=models, rpm=rpm, tpm=tpm)
        await s.audit.append([AuditEvent("key.create", row.id, cli_actor(), detail={
            "name": name, "scope": scope, "models": models, "rpm": rpm, "tpm": tpm})])
        return key, row

    return run(settings, job)


def list_keys(settings: ProxySettings) -> list[ApiKeyRow]:
    return run(settings, lambda s: s.keys.list())


def revoke(settings: ProxySettings, key_id: str) -> bool:
    key_id = key_id.removeprefix("inf_").split("_")[0]

    async def job(s: Store) -> bool:
        revoked = await s.keys.revoke(key_id)
        await s.audit.append([AuditEvent("key.revoke", key_id[:64], cli_actor(),
                                         "ok" if revoked else "not found")])
        return revoked

    return run(settings, job)


def usage(settings: ProxySettings, *, since: str | None, until: str | None,
          key_id: str | None) -> list[UsageRow]:
    return run(settings, lambda s: s.requests.usage(since_day=since, until_day=until,
                                                    key_id=key_id))
