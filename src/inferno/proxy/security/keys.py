"""API keys: ``inf_<id>_<secret>``. Only SHA-256(key) is stored; ``inf_<id>`` is shown.

Verification never touches the database: :class:`KeyCache` holds a snapshot of every key
(refreshed in the background), looks the presented key up by its public id and compares
the hashes with :func:`hmac.compare_digest`, so timing says nothing about the secret.
A key that does not match the strict format is refused before any lookup.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from inferno.store import ApiKeyRow, Store

log = logging.getLogger("inferno.proxy.security")

_KEY_RE = re.compile(r"inf_([0-9a-f]{12})_([A-Za-z0-9_\-]{43})")
Scope = str  # "admin" | "user"
SCOPES = ("admin", "user")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request runs as. ``key_id`` None means auth is off (a local, trusted caller)."""

    key_id: str | None
    scope: Scope
    models: frozenset[str] | None = None  # None: every model
    rpm: int | None = None
    tpm: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.scope == "admin"


ANONYMOUS = Principal(key_id=None, scope="admin")


def new_key() -> tuple[str, str]:
    """A fresh key and its public id. The key is shown once and never stored."""
    key_id = secrets.token_hex(6)
    return f"inf_{key_id}_{secrets.token_urlsafe(32)}", key_id


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def display(key_id: str) -> str:
    return f"inf_{key_id}_…"


async def create_key(store: Store, *, name: str, scope: Scope = "user",
                     models: list[str] | None = None, rpm: int | None = None,
                     tpm: int | None = None) -> tuple[str, ApiKeyRow]:
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
    key, key_id = new_key()
    row = ApiKeyRow(id=key_id, name=name, key_hash=hash_key(key), scope=scope,
                    models=models or None, rpm=rpm or None, tpm=tpm or None,
                    created_at=time.time())
    await store.keys.create(row)
    return key, row


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: bytes
    principal: Principal


class KeyCache:
    """The keys the proxy accepts, as of the last refresh (``interval`` seconds)."""

    def __init__(self, store: Store | None, *, interval: float = 1.0) -> None:
        self._store = store
        self._interval = interval
        self._entries: Mapping[str, _Entry] = {}
        self.loaded = False
        self._failing = False

    def __len__(self) -> int:
        return len(self._entries)

    def verify(self, key: str) -> Principal | None:
        m = _KEY_RE.fullmatch(key)
        if m is None:
            return None
        entry = self._entries.get(m.group(1))
        digest = hashlib.sha256(key.encode()).digest()
        # Compare even when the id is unknown, so both paths cost the same.
        ok = hmac.compare_digest(digest, entry.digest if entry else b"\0" * 32)
        return entry.principal if ok and entry is not None else None

    def principal(self, key_id: str) -> Principal | None:
        """The principal of an active key, by its public id (acting on behalf of it)."""
        entry = self._entries.get(key_id)
        return entry.principal if entry is not None else None

    def replace(self, rows: list[ApiKeyRow]) -> None:
        entries = {}
        for r in rows:
            if r.revoked_at is not None:
                continue
            entries[r.id] = _Entry(bytes.fromhex(r.key_hash), Principal(
                key_id=r.id, scope=r.scope, rpm=r.rpm, tpm=r.tpm,
                models=frozenset(r.models) if r.models else None))
        self._entries = entries  # one reference swap: readers never see half a refresh
        self.loaded = True

    async def refresh(self) -> None:
        if self._store is None:
            return
        try:
            rows = await self._store.keys.list(include_revoked=False)
        except Exception as exc:  # keep serving the last snapshot through an outage
            if not self._failing:
                log.warning("cannot refresh API keys (serving the last %d): %s",
                            len(self._entries), type(exc).__name__)
            self._failing = True
            return
        self._failing = False
        self.replace(rows)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.refresh()
