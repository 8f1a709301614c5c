"""Usage, request-log and key routes on the API port. Keys and others' data need admin.

``GET /v1/usage``           tokens, cost, requests per key / model / day (admin: all keys,
                            or ``?key_id=``; a user key: its own rows only)
``GET /v1/requests``        the latest request-log rows (same scoping; ``?limit=``)
``GET /v1/admin/keys``      list keys (prefix, name, scope, limits; never a hash)
``POST /v1/admin/keys``     create a key: the answer shows it once
``DELETE /v1/admin/keys/ID`` revoke a key
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
from inferno.proxy.security.keys import SCOPES, KeyCache, create_key, display
from inferno.store import Store

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
PREFIXES = ("/v1/usage", "/v1/requests", "/v1/admin/")


class AdminAPI:
    def __init__(self, auth: Authenticator, store: Store | None, keys: KeyCache) -> None:
        self._auth = auth
        self._store = store
        self._keys = keys

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
        if path == "/v1/admin/keys":
            if req.method == "GET":
                keys = await store.keys.list()
                return Response.json({"object": "list", "data": [
                    {"id": r.id, "prefix": display(r.id), "name": r.name, "scope": r.scope,
                     "models": r.models, "rpm": r.rpm, "tpm": r.tpm, "created_at": r.created_at,
                     "revoked": r.revoked_at is not None} for r in keys]})
            if req.method == "POST":
                return await self._create(req, store)
            raise MethodNotAllowed(f"{req.method} is not allowed on {path}.")
        if path.startswith("/v1/admin/keys/") and req.method == "DELETE":
            key_id = path.rsplit("/", 1)[-1]
            if not await store.keys.revoke(key_id):
                raise NotFound("No active key with this id.")
            await self._keys.refresh()
            return Response.json({"id": key_id, "revoked": True})
        raise NotFound(f"Unknown route {req.method} {req.path}.")

    async def _create(self, req: Request, store: Store) -> Response:
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
        await self._keys.refresh()
        return Response.json({"id": row.id, "key": key, "name": name, "scope": scope,
                              "models": models, "rpm": rpm, "tpm": tpm}, status=201)


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
