"""Usage, request-log and key routes on the API port. Keys and others' data need admin.

``GET /v1/usage``           tokens, cost, requests per key / model / day (admin: all keys,
                            or ``?key_id=``; a user key: its own rows only)
``GET /v1/requests``        the latest request-log rows (same scoping; ``?limit=``)
``GET /v1/admin/keys``      list keys (prefix, name, scope, limits; never a hash)
``POST /v1/admin/keys``     create a key: the answer shows it once
``DELETE /v1/admin/keys/ID`` revoke a key
``GET /v1/admin/audit``     the audit trail, newest first (``?actor= &action= &target=
                            &since= &until=`` as Unix times, ``&before=SEQ &limit=`` to page)

Key changes are recorded in the audit trail (actor: the calling key, or ``local`` when
auth is off), never with the key itself.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any
from urllib.parse import parse_qs

from inferno.core.errors import (
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
)
from inferno.core.validation import json_object
from inferno.net import Request, Response
from inferno.proxy.security.auth import Authenticator, require_admin
from inferno.proxy.security.keys import SCOPES, KeyCache, Principal, create_key, display
from inferno.store import Store
from inferno.store.audit import AuditEvent, AuditTrail

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
PREFIXES = ("/v1/usage", "/v1/requests", "/v1/admin/")


def actor_of(principal: Principal) -> str:
    """Who acted, for the audit trail: a key id (JWT subjects are key ids here too), or
    ``local`` for a caller of a proxy without auth (trusted by where it connects from)."""
    return principal.key_id or "local"


class AdminAPI:
    def __init__(self, auth: Authenticator, store: Store | None, keys: KeyCache,
                 audit: AuditTrail | None = None) -> None:
        self._auth = auth
        self._store = store
        self._keys = keys
        self._audit = audit or AuditTrail(None)

    def owns(self, path: str) -> bool:
        return path.startswith(PREFIXES)

    async def handle(self, req: Request) -> Response:
        principal = self._auth.authenticate(req)
        store = self._store
        if store is None:
            raise ServiceUnavailable("This proxy runs without a database (database_url: none).",
                                     retry_after=None)
        q = {k: v[-1] for k, v in parse_qs(req.query or "").items()}
        path = req.path.rstrip("/")
        if path in ("/v1/usage", "/v1/requests"):
            if req.method != "GET":
                raise MethodNotAllowed(f"{req.method} is not allowed on {path}; use GET.")
            key_id = q.get("key_id")
            if not principal.is_admin:
                if key_id is not None and key_id != principal.key_id:
                    raise PermissionDenied("A user key can read only its own usage and logs.")
                key_id = principal.key_id
            if path == "/v1/requests":
                limit = _int(q.get("limit"), 100, 1, 1000, "limit")
                rows = await store.requests.recent(key_id=key_id, limit=limit)
                return Response.json({"object": "list", "data": rows})
            since, until = _day(q.get("since"), "since"), _day(q.get("until"), "until")
            usage = await store.requests.usage(since_day=since, until_day=until, key_id=key_id)
            return Response.json({"object": "list", "data": [asdict(u) for u in usage]})
        require_admin(principal)
        if path == "/v1/admin/audit":
            if req.method != "GET":
                raise MethodNotAllowed(f"{req.method} is not allowed on {path}; use GET.")
            return await _audit_page(store, q)
        if path == "/v1/admin/keys":
            if req.method == "GET":
                keys = await store.keys.list()
                return Response.json({"object": "list", "data": [
                    {"id": r.id, "prefix": display(r.id), "name": r.name, "scope": r.scope,
                     "models": r.models, "rpm": r.rpm, "tpm": r.tpm, "created_at": r.created_at,
                     "revoked": r.revoked_at is not None} for r in keys]})
            if req.method == "POST":
                return await self._create(req, store, principal)
            raise MethodNotAllowed(f"{req.method} is not allowed on {path}.")
        if path.startswith("/v1/admin/keys/") and req.method == "DELETE":
            key_id = path.rsplit("/", 1)[-1]
            revoked = await store.keys.revoke(key_id)
            self._audit.record(AuditEvent(
                "key.revoke", key_id[:64], actor_of(principal),
                "ok" if revoked else "not found", req.header("x-request-id")))
            if not revoked:
                raise NotFound("No active key with this id.")
            await self._keys.refresh()
            return Response.json({"id": key_id, "revoked": True})
        raise NotFound(f"Unknown route {req.method} {req.path}.")

    async def _create(self, req: Request, store: Store, principal: Principal) -> Response:
        data = json_object(req.body, empty=True)
        name = data.get("name")
        scope = data.get("scope", "user")
        models = data.get("models")
        if not isinstance(name, str) or not 0 < len(name) <= 200:
            raise InvalidRequest("'name' must be a string of 1-200 characters.", param="name")
        if scope not in SCOPES:
            raise InvalidRequest("'scope' must be admin or user.", param="scope")
        if models is not None and (not isinstance(models, list)
                                   or not all(isinstance(m, str) for m in models)):
            raise InvalidRequest("'models' must be a list of model names.", param="models")
        rpm, tpm = _limit(data.get("rpm"), "rpm"), _limit(data.get("tpm"), "tpm")
        key, row = await create_key(store, name=name, scope=scope, models=models, rpm=rpm,
                                    tpm=tpm)
        self._audit.record(AuditEvent(
            "key.create", row.id, actor_of(principal), "ok", req.header("x-request-id"),
            {"name": name, "scope": scope, "models": models, "rpm": rpm, "tpm": tpm}))
        await self._keys.refresh()
        return Response.json({"id": row.id, "key": key, "name": name, "scope": scope,
                              "models": models, "rpm": rpm, "tpm": tpm}, status=201)


async def _audit_page(store: Store, q: dict[str, str]) -> Response:
    limit = _int(q.get("limit"), 100, 1, 1000, "limit")
    before = _int(q.get("before"), 0, 1, 2**62, "before") or None
    since, until = _time(q.get("since"), "since"), _time(q.get("until"), "until")
    rows = await store.audit.find(actor=q.get("actor"), action=q.get("action"),
                                  target=q.get("target"), since=since, until=until,
                                  before=before, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return Response.json({"object": "list", "data": rows, "has_more": more,
                          "next_before": rows[-1]["seq"] if more else None})


def _time(v: str | None, name: str) -> float | None:
    if v is None:
        return None
    try:
        return float(v)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be a Unix time in seconds.", param=name) from None


def _limit(v: Any, name: str) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise InvalidRequest(f"'{name}' must be a non-negative integer.", param=name)
    return v or None


def _int(v: str | None, default: int, lo: int, hi: int, name: str) -> int:
    if v is None:
        return default
    if not v.isdigit() or not lo <= int(v) <= hi:
        raise InvalidRequest(f"'{name}' must be an integer from {lo} to {hi}.", param=name)
    return int(v)


def _day(v: str | None, name: str) -> str | None:
    if v is not None and not _DAY.fullmatch(v):
        raise InvalidRequest(f"'{name}' must be a date YYYY-MM-DD.", param=name)
    return v
